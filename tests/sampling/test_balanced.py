import math
from collections import Counter

import pytest
import torch

from partialseg.sampling import DatasetBalancedSampler

# 100 cases of A, 25 of B, 4 of C: square roots 10, 5, 2.
CASES = ["A"] * 100 + ["B"] * 25 + ["C"] * 4


def chi_square(observed: Counter, expected: dict[str, float], total: int) -> float:
    return sum((observed[name] - total * p) ** 2 / (total * p) for name, p in expected.items())


def test_default_alpha_matches_square_root_shares():
    sampler = DatasetBalancedSampler(CASES, num_samples=10)
    shares = sampler.dataset_probabilities
    assert shares["A"] == pytest.approx(10 / 17)
    assert shares["B"] == pytest.approx(5 / 17)
    assert shares["C"] == pytest.approx(2 / 17)


def test_case_probability_within_dataset_is_equal():
    sampler = DatasetBalancedSampler(CASES, num_samples=10)
    probabilities = sampler.probabilities
    assert probabilities[0] == pytest.approx(10 / 17 / 100)
    assert probabilities[100] == pytest.approx(5 / 17 / 25)
    assert probabilities[-1] == pytest.approx(2 / 17 / 4)
    assert float(probabilities.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("alpha", "expected"),
    [
        (0.0, {"A": 100 / 129, "B": 25 / 129, "C": 4 / 129}),
        (0.5, {"A": 10 / 17, "B": 5 / 17, "C": 2 / 17}),
        (1.0, {"A": 1 / 3, "B": 1 / 3, "C": 1 / 3}),
    ],
    ids=["uniform-cases", "square-root", "uniform-datasets"],
)
def test_drawn_frequencies_pass_chi_square(alpha, expected):
    total = 20_000
    sampler = DatasetBalancedSampler(CASES, alpha=alpha, num_samples=total, seed=3)
    observed = Counter(CASES[index] for index in sampler)
    assert sampler.dataset_probabilities == pytest.approx(expected)
    # With 2 degrees of freedom P(chi2 > x) = exp(-x / 2), so 27.6 is the 1e-6 bound.
    assert chi_square(observed, expected, total) < 27.6


def test_draw_is_reproducible_and_changes_with_epoch():
    sampler = DatasetBalancedSampler(CASES, num_samples=50, seed=7)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_seed_changes_draw():
    first = list(DatasetBalancedSampler(CASES, num_samples=50, seed=1))
    second = list(DatasetBalancedSampler(CASES, num_samples=50, seed=2))
    assert first != second


def test_len_and_index_range():
    sampler = DatasetBalancedSampler(CASES, num_samples=37)
    indices = list(sampler)
    assert len(sampler) == 37
    assert len(indices) == 37
    assert all(0 <= index < len(CASES) for index in indices)


def test_ranks_split_one_global_draw():
    single = DatasetBalancedSampler(CASES, num_samples=30, seed=5, num_replicas=1, rank=0)
    single.num_samples = 90
    global_draw = list(single)
    shares = []
    for rank in range(3):
        sampler = DatasetBalancedSampler(CASES, num_samples=30, seed=5, num_replicas=3, rank=rank)
        shares.append(list(sampler))
    assert all(len(share) == 30 for share in shares)
    for rank, share in enumerate(shares):
        assert share == global_draw[rank::3]


def test_seed_and_epoch_do_not_alias():
    first = DatasetBalancedSampler(CASES, num_samples=50, seed=0)
    first.set_epoch(1)
    second = DatasetBalancedSampler(CASES, num_samples=50, seed=1)
    assert list(first) != list(second)


def test_defaults_follow_torch_distributed(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 3)
    sampler = DatasetBalancedSampler(CASES, num_samples=10)
    assert sampler.num_replicas == 4
    assert sampler.rank == 3


def test_dataset_weights_scale_shares():
    sampler = DatasetBalancedSampler(CASES, num_samples=10, dataset_weights={"C": 0.0})
    assert sampler.dataset_probabilities == pytest.approx({"A": 10 / 15, "B": 5 / 15, "C": 0.0})
    assert all(
        CASES[index] != "C"
        for index in DatasetBalancedSampler(CASES, num_samples=500, dataset_weights={"C": 0.0})
    )


def test_dataset_weights_unknown_name():
    with pytest.raises(ValueError, match="Did you mean 'B'"):
        DatasetBalancedSampler(CASES, num_samples=10, dataset_weights={"b": 2.0})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0}, "num_samples must be a positive int"),
        ({"num_samples": 5, "seed": -1}, "seed must be a non-negative int"),
        ({"num_samples": 5, "alpha": math.nan}, "alpha must be a finite number"),
        ({"num_samples": 5, "num_replicas": 2, "rank": 2}, r"rank must be in \[0, 1\]"),
        ({"num_samples": 5, "dataset_weights": {"A": -1.0}}, "finite non-negative"),
        (
            {"num_samples": 5, "dataset_weights": {"A": 0.0, "B": 0.0, "C": 0.0}},
            "leave every dataset out",
        ),
    ],
    ids=[
        "zero-samples",
        "negative-seed",
        "nan-alpha",
        "rank-too-large",
        "negative-weight",
        "all-zero",
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DatasetBalancedSampler(CASES, **kwargs)


def test_works_with_dataloader():
    dataset = torch.utils.data.TensorDataset(torch.arange(len(CASES)))
    sampler = DatasetBalancedSampler(CASES, num_samples=12)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler)
    batches = list(loader)
    assert len(batches) == 3
