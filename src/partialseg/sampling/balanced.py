"""A sampler that balances datasets of very different sizes."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from partialseg.labels import suggest_name

logger = logging.getLogger(__name__)


class DatasetBalancedSampler(Sampler[int]):
    """Draw case indices with replacement, with probability proportional to n_d^-alpha.

    n_d is the number of cases of the case's dataset, so a dataset's share of the
    draws is proportional to n_d^(1 - alpha). MultiTalent (Ulrich et al., MICCAI
    2023) uses alpha = 0.5: a dataset's share is sqrt(n_d) / sum_d' sqrt(n_d').
    alpha = 0 draws every case equally often, and alpha = 1 every dataset equally
    often.

    Each epoch is one global draw of ``num_samples * num_replicas`` indices from a
    generator seeded by both ``seed`` and the epoch set with :meth:`set_epoch`. Rank r
    yields the draws r, r + num_replicas, ..., so the ranks' shares are disjoint
    positions of the same global draw, as with
    :class:`torch.utils.data.DistributedSampler`.

    Args:
        dataset_of_case: The dataset name of every case, indexed like the
            ``torch.utils.data.Dataset`` the sampler feeds.
        alpha: Exponent of the per-case weight n_d^-alpha.
        num_samples: Number of indices this rank yields per epoch.
        seed: Seed of the draw, the same on every rank.
        num_replicas: Number of distributed ranks. Defaults to the world size when
            ``torch.distributed`` is initialised, else 1.
        rank: This rank. Defaults to the ``torch.distributed`` rank, else 0.
        dataset_weights: Multipliers of the share of some datasets (1 for those
            not listed, 0 to leave a dataset out).

    Raises:
        ValueError: If an argument is out of range or ``dataset_weights`` names an
            unknown dataset.

    Example:
        >>> sampler = DatasetBalancedSampler(["A"] * 9 + ["B"], num_samples=4, seed=1)
        >>> sampler.dataset_probabilities
        {'A': 0.75, 'B': 0.25}
        >>> len(list(sampler))
        4
    """

    def __init__(
        self,
        dataset_of_case: Sequence[str],
        *,
        alpha: float = 0.5,
        num_samples: int,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        dataset_weights: Mapping[str, float] | None = None,
    ) -> None:
        if isinstance(dataset_of_case, str) or len(dataset_of_case) == 0:
            raise ValueError(
                "dataset_of_case must be a non-empty sequence with the dataset name of "
                f"every case, got {dataset_of_case!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if not math.isfinite(alpha):
            raise ValueError(f"alpha must be a finite number, got {alpha!r}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        self.dataset_of_case = list(dataset_of_case)
        self.alpha = float(alpha)
        self.num_samples = num_samples
        self.seed = int(seed)
        self.num_replicas, self.rank = _resolve_replicas(num_replicas, rank)
        self.epoch = 0
        self.dataset_sizes = dict(Counter(self.dataset_of_case))
        self.dataset_weights = _check_dataset_weights(dataset_weights, self.dataset_sizes)
        self.probabilities = self._case_probabilities()

    def _case_probabilities(self) -> torch.Tensor:
        per_case = torch.tensor(
            [
                self.dataset_weights.get(name, 1.0) * self.dataset_sizes[name] ** -self.alpha
                for name in self.dataset_of_case
            ],
            dtype=torch.float64,
        )
        return per_case / per_case.sum()

    @property
    def dataset_probabilities(self) -> dict[str, float]:
        """Probability that one draw comes from each dataset, in first-seen order."""
        shares = dict.fromkeys(self.dataset_sizes, 0.0)
        for name, probability in zip(
            self.dataset_of_case, self.probabilities.tolist(), strict=True
        ):
            shares[name] += probability
        return {name: round(share, 12) for name, share in shares.items()}

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch, which changes the draw reproducibly.

        Args:
            epoch: Epoch number. Call this before iterating in each epoch.

        Example:
            >>> sampler = DatasetBalancedSampler(["A", "B", "B"], num_samples=6)
            >>> sampler.set_epoch(3)
            >>> list(sampler) == list(sampler)
            True
        """
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        # SeedSequence mixes seed and epoch, so (seed 0, epoch 1) and (seed 1, epoch 0)
        # give different draws, unlike seed + epoch.
        generator = torch.Generator()
        generator.manual_seed(
            int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        )
        total = self.num_samples * self.num_replicas
        draw = torch.multinomial(self.probabilities, total, replacement=True, generator=generator)
        return iter(draw[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


def _resolve_replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    distributed = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if distributed else 1
    if rank is None:
        rank = dist.get_rank() if distributed else 0
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be at least 1, got {num_replicas}")
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be in [0, {num_replicas - 1}], got {rank}")
    return num_replicas, rank


def _check_dataset_weights(
    dataset_weights: Mapping[str, float] | None, dataset_sizes: Mapping[str, int]
) -> dict[str, float]:
    weights = dict(dataset_weights or {})
    for name, weight in weights.items():
        if name not in dataset_sizes:
            raise ValueError(
                f"dataset_weights names unknown dataset {name!r}."
                f"{suggest_name(str(name), dataset_sizes)} Known datasets: {list(dataset_sizes)}"
            )
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(
                f"dataset_weights[{name!r}] must be a finite non-negative number, got {weight!r}"
            )
    if all(weights.get(name, 1.0) == 0 for name in dataset_sizes):
        raise ValueError(
            "dataset_weights leave every dataset out; give at least one a positive weight"
        )
    return weights
