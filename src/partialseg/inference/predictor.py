"""Whole-volume prediction with a trained network: :class:`Predictor`."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Literal, overload

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from partialseg.data.preprocessing import Preprocessing, resample_image
from partialseg.inference._gaussian import window_starts
from partialseg.inference._grid import OriginalGridResampler, axis_maps
from partialseg.inference._logits import LogitSource
from partialseg.inference.inputs import ImageInput, load_image
from partialseg.inference.postprocessing import (
    body_mask,
    keep_largest_component,
    resolve_postprocessing,
)
from partialseg.inference.sliding_window import WindowGrid, run_sliding_window
from partialseg.nn.base import SegmentationNetwork
from partialseg.nn.heads import unknown_name_message

logger = logging.getLogger(__name__)

__all__ = ["Predictor"]

_PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Predictor:
    """Predict one binary mask per class for whole CT volumes with a sliding window.

    The image is cast to float32 HU, resampled linearly to the network spacing
    and normalised exactly as in training (``network.preprocessing``), and padded
    to at least the patch size with air (the lower clip bound). Windows overlap
    by ``1 - step_size`` of the patch; each window's sigmoid probabilities are
    weighted with a Gaussian of sigma ``patch / 8`` per axis and averaged. The
    average of every class is resampled linearly back onto the input grid and
    thresholded at 0.5. This is the inference of MultiTalent (Ulrich et al.,
    MICCAI 2023), without averaging over several trained folds.

    Memory: the volume is processed in slabs along its slowest array axis (z).
    The accumulator keeps only the z-planes that the current row of windows
    touches, ``classes x (patch_z + 1) x height x width`` values of the network
    grid in ``accumulate_dtype``. Finished slabs are resampled to the input
    grid, thresholded and kept as bit-packed masks until the end. Peak memory
    grows with the number of classes times one slab, not times the whole volume.
    For networks with per-class heads (``network.heads.select``), each window's
    logits are computed eight classes at a time from the decoder features.

    Args:
        network: A trained network with ``preprocessing`` set. It is moved to
            ``device`` and put in evaluation mode.
        step_size: Maximum distance between neighbouring windows as a fraction
            of the patch size, in (0, 1].
        gaussian: Weight window voxels with a Gaussian (sigma = patch / 8);
            otherwise average overlapping windows with equal weights.
        mirroring: Array axes of the network grid (0 = z, 1 = y, 2 = x) to
            mirror for test-time augmentation; every combination of them is
            predicted and the probabilities are averaged (2**len(axes) network
            passes per window). None disables mirroring.
        device: Device that runs the network. Accumulation stays on the CPU.
            NOTE: only CPU prediction has been tested so far.
        batch_size: Windows per network call.
        precision: ``"bf16"`` or ``"fp16"`` to run the network under autocast,
            or None for float32.
        progress: Show a progress bar over the windows.
        accumulate_dtype: ``torch.float16`` (default) or ``torch.float32`` for
            the running sums of centred probabilities (probability - 0.5).
            float16 halves the accumulator, the largest buffer. Each window
            adds in float32 and the sum is rounded once to float16, by at most
            2**-13 for sums in [-0.5, 0.5]. So a mask voxel can differ from
            float32 accumulation only where the float32 probability is closer
            to 0.5 than 2**-13 times the number of additions to the voxel: the
            windows covering it (eight at ``step_size=0.5`` with evenly spaced
            windows, so 1e-3) times the mirrored passes. Returned probabilities
            are float16 either way.

    Raises:
        TypeError: If ``network`` is not an ``nn.Module``.
        ValueError: If an option is out of range, ``device`` is not a torch
            device, or autocast is not available on ``device`` for ``precision``.

    Example:
        >>> from partialseg.nn import create_model
        >>> net = create_model("plain_unet", classes=["D01/liver", "D01/spleen"],
        ...                    features_per_stage=[4, 8], strides=[1, 2])
        >>> net.preprocessing = Preprocessing(spacing=(3.0, 3.0, 3.0), patch_size=(16, 16, 16),
        ...                                   ct_clip=(-1000.0, 1000.0), ct_mean=0.0, ct_std=500.0)
        >>> predictor = Predictor(net, progress=False)
        >>> ct = np.full((20, 24, 24), -1000, np.int16)
        >>> masks = predictor.predict(ct, spacing=(2.5, 2.0, 2.0))
        >>> sorted(masks), masks["D01/liver"].GetSize()
        (['D01/liver', 'D01/spleen'], (24, 24, 20))
    """

    def __init__(
        self,
        network: SegmentationNetwork,
        *,
        step_size: float = 0.5,
        gaussian: bool = True,
        mirroring: Sequence[int] | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 1,
        precision: Literal["bf16", "fp16"] | None = None,
        progress: bool = True,
        accumulate_dtype: torch.dtype = torch.float16,
    ) -> None:
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be a SegmentationNetwork, got {type(network).__name__}")
        if not 0 < step_size <= 1:
            raise ValueError(f"step_size must be in (0, 1], got {step_size!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
        if accumulate_dtype not in (torch.float16, torch.float32):
            raise ValueError(
                f"accumulate_dtype must be torch.float16 or torch.float32, got {accumulate_dtype}"
            )
        try:
            self.device = torch.device(device)
        except RuntimeError as error:
            raise ValueError(
                f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}"
            ) from error
        self.network = network.to(self.device).eval()
        self.step_size = float(step_size)
        self.gaussian = bool(gaussian)
        self.mirror_axes = _mirror_combinations(mirroring)
        self.batch_size = int(batch_size)
        self.autocast_dtype = _autocast_dtype(precision, self.device)
        self.progress = bool(progress)
        self.accumulate_dtype = accumulate_dtype

    @overload
    def predict(
        self,
        image: ImageInput,
        *,
        classes: Sequence[str] | None = ...,
        spacing: Sequence[float] | None = ...,
        return_probabilities: Literal[False] = ...,
        postprocess: str | Sequence[str] | None = ...,
    ) -> dict[str, sitk.Image]: ...

    @overload
    def predict(
        self,
        image: ImageInput,
        *,
        classes: Sequence[str] | None = ...,
        spacing: Sequence[float] | None = ...,
        return_probabilities: Literal[True],
        postprocess: str | Sequence[str] | None = ...,
    ) -> tuple[dict[str, sitk.Image], dict[str, np.ndarray]]: ...

    def predict(
        self,
        image: ImageInput,
        *,
        classes: Sequence[str] | None = None,
        spacing: Sequence[float] | None = None,
        return_probabilities: bool = False,
        postprocess: str | Sequence[str] | None = None,
    ) -> dict[str, sitk.Image] | tuple[dict[str, sitk.Image], dict[str, np.ndarray]]:
        """Predict a uint8 mask per class on the grid of ``image``.

        Args:
            image: A NIfTI, NRRD or MHA file, a DICOM series folder, a SimpleITK
                image, or a numpy array (z, y, x) in HU together with ``spacing``.
            classes: Class names to predict, in output order; None predicts all
                of ``network.class_names``. With per-class heads
                (``network.heads.select``) only the requested heads are computed.
            spacing: Voxel spacing (z, y, x) in mm, for numpy arrays only.
            return_probabilities: Also return the averaged probabilities.
            postprocess: Steps applied to the masks (not the probabilities):
                ``"body"`` removes voxels outside the body (see
                :func:`~partialseg.inference.postprocessing.body_mask`) and
                ``"largest_component"`` keeps each class's largest connected
                component. None applies neither, as MultiTalent does.

        Returns:
            A dict from class name to a uint8 SimpleITK mask (1 inside) with the
            size, spacing, origin and direction of the input. With
            ``return_probabilities``, a tuple of that dict and a dict from class
            name to a float16 array (z, y, x) on the same grid.

        Raises:
            FileNotFoundError: If the image file does not exist.
            ValueError: If the image is invalid (not 3D, NaN, unreadable), a
                class or post-processing name is unknown, or the network has no
                preprocessing.
        """
        finished = self._run(
            image,
            classes=classes,
            spacing=spacing,
            keep_probabilities=return_probabilities,
            postprocess=postprocess,
        )
        masks = dict(finished.masks())
        if not return_probabilities:
            return masks
        return masks, finished.probabilities()

    def iter_masks(
        self,
        image: ImageInput,
        *,
        classes: Sequence[str] | None = None,
        spacing: Sequence[float] | None = None,
        postprocess: str | Sequence[str] | None = None,
    ) -> Iterator[tuple[str, sitk.Image]]:
        """Predict like :meth:`predict`, then return the masks one class at a time.

        The sliding window runs before this method returns. Each mask is
        unpacked only when the iterator reaches it, so a caller that writes and
        drops every mask keeps one uint8 volume at a time instead of one per
        class. Arguments and errors are those of :meth:`predict`.

        Returns:
            An iterator of ``(class name, uint8 SimpleITK mask)`` pairs in the
            order of ``classes``.

        Example:
            >>> from partialseg.nn import create_model
            >>> net = create_model("plain_unet", classes=["D01/liver"],
            ...                    features_per_stage=[4, 8], strides=[1, 2])
            >>> net.preprocessing = Preprocessing(spacing=(3.0, 3.0, 3.0),
            ...     patch_size=(16, 16, 16), ct_clip=(-1000.0, 1000.0), ct_mean=0.0, ct_std=500.0)
            >>> ct = np.full((20, 24, 24), -1000, np.int16)
            >>> predictor = Predictor(net, progress=False)
            >>> for name, mask in predictor.iter_masks(ct, spacing=(2.5, 2.0, 2.0)):
            ...     print(name, mask.GetSize())
            D01/liver (24, 24, 20)
        """
        finished = self._run(
            image,
            classes=classes,
            spacing=spacing,
            keep_probabilities=False,
            postprocess=postprocess,
        )
        return finished.masks()

    def _run(
        self,
        image: ImageInput,
        *,
        classes: Sequence[str] | None,
        spacing: Sequence[float] | None,
        keep_probabilities: bool,
        postprocess: str | Sequence[str] | None,
    ) -> _FinishedPrediction:
        """Run the sliding window and return the thresholded, still packed result."""
        original = load_image(image, spacing=spacing)
        names = self._resolve_classes(classes)
        steps = resolve_postprocessing(postprocess)
        preprocessing = self._preprocessing()

        volume, network_grid = preprocess_image(original, preprocessing)
        volume, padding = _pad_to_patch(volume, preprocessing)
        grid = WindowGrid.build(
            volume.shape, preprocessing.patch_size, step_size=self.step_size, gaussian=self.gaussian
        )
        _warn_about_dense_windows(grid, self.step_size)
        geometry = _Geometry.of(original)
        resampler = OriginalGridResampler(
            axis_maps(original, network_grid, padding),
            geometry.shape,
            len(names),
            keep_probabilities=keep_probabilities,
        )
        body = body_mask(original) if "body" in steps else None
        # Only the geometry of the input is needed from here on. Dropping the
        # images frees their voxels during the sliding window where this
        # function holds the last reference (an input read from a file).
        del original, network_grid
        logger.info(
            "predicting %d classes for an image of %s voxels (network grid %s)",
            len(names),
            geometry.shape,
            volume.shape,
        )

        source = LogitSource(self.network, names, autocast=self._autocast)
        with torch.inference_mode():
            run_sliding_window(
                lambda patches: self._window_contributions(source, patches),
                torch.from_numpy(volume),
                grid,
                resampler.consume,
                num_classes=len(names),
                accumulate_dtype=self.accumulate_dtype,
                batch_size=self.batch_size,
                progress=self.progress,
            )
        del volume

        return _FinishedPrediction(geometry, names, resampler, body, steps)

    def _preprocessing(self) -> Preprocessing:
        preprocessing = getattr(self.network, "preprocessing", None)
        if preprocessing is None:
            raise ValueError(
                f"{type(self.network).__name__} has no preprocessing, so the spacing, patch size "
                "and intensity normalisation of training are unknown; set network.preprocessing "
                "to the partialseg.data.Preprocessing used in training"
            )
        return preprocessing

    def _resolve_classes(self, classes: Sequence[str] | None) -> list[str]:
        known = list(self.network.class_names)
        if classes is None:
            return known
        if isinstance(classes, str):
            raise TypeError(
                f"classes must be a sequence of class names, got the string {classes!r}; "
                f"use classes=[{classes!r}]"
            )
        names = list(classes)
        if not names:
            raise ValueError("classes is empty; pass at least one class name or None for all")
        for name in names:
            if name not in known:
                raise ValueError(unknown_name_message("class name", name, known))
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"classes contains duplicate names {duplicates}")
        return names

    def _window_contributions(
        self, source: LogitSource, patches: torch.Tensor
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(first class, centred probabilities)`` chunks of a batch of patches.

        Each chunk is the sigmoid probability minus 0.5 of one mirrored pass,
        divided by the number of passes, so that the chunks of one class add up
        to its mirror-averaged centred probability.
        """
        patches = patches.to(self.device)
        scale = 1.0 / len(self.mirror_axes)
        for axes in self.mirror_axes:
            dims = [axis + 2 for axis in axes]
            inputs = torch.flip(patches, dims) if dims else patches
            for first, logits in source.chunks(inputs):
                centred = logits.float()
                if dims:
                    centred = torch.flip(centred, dims)
                centred = centred.sigmoid_().sub_(0.5)
                if scale != 1.0:
                    centred.mul_(scale)
                yield first, centred

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """Size, spacing, origin and direction of an image, without its voxels."""

    shape: tuple[int, int, int]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> _Geometry:
        return cls(
            tuple(image.GetSize()[::-1]),
            image.GetSpacing(),
            image.GetOrigin(),
            image.GetDirection(),
        )

    def image(self, array: np.ndarray) -> sitk.Image:
        """Return ``array`` (z, y, x) as a SimpleITK image with this geometry."""
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


@dataclasses.dataclass(frozen=True)
class _FinishedPrediction:
    """Packed masks of a finished sliding window, unpacked one class at a time."""

    geometry: _Geometry
    names: list[str]
    resampler: OriginalGridResampler
    body: np.ndarray | None
    steps: tuple[str, ...]

    def masks(self) -> Iterator[tuple[str, sitk.Image]]:
        for index, name in enumerate(self.names):
            mask = self.resampler.mask(index)
            if self.body is not None:
                mask &= self.body
            if "largest_component" in self.steps:
                mask = keep_largest_component(mask)
            yield name, self.geometry.image(mask)

    def probabilities(self) -> dict[str, np.ndarray]:
        return {name: self.resampler.probabilities[i] for i, name in enumerate(self.names)}


def preprocess_image(
    image: sitk.Image, preprocessing: Preprocessing
) -> tuple[np.ndarray, sitk.Image]:
    """Cast to float32 HU, resample linearly to the network spacing and normalise.

    Args:
        image: CT image in Hounsfield units.
        preprocessing: The network's preprocessing.

    Returns:
        The normalised float32 array (z, y, x) and the resampled image, whose
        geometry defines the network grid.

    Example:
        >>> prep = Preprocessing(spacing=(2.0, 2.0, 2.0), patch_size=(8, 8, 8),
        ...                      ct_clip=(-1000.0, 1000.0), ct_mean=0.0, ct_std=1000.0)
        >>> image = sitk.Image([10, 10, 10], sitk.sitkInt16)
        >>> volume, grid = preprocess_image(image, prep)
        >>> volume.shape, grid.GetSpacing()
        ((5, 5, 5), (2.0, 2.0, 2.0))
    """
    resampled = resample_image(sitk.Cast(image, sitk.sitkFloat32), preprocessing.spacing)
    volume = preprocessing.normalize(sitk.GetArrayViewFromImage(resampled))
    return np.ascontiguousarray(volume, dtype=np.float32), resampled


def _pad_to_patch(
    volume: np.ndarray, preprocessing: Preprocessing
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Pad every axis shorter than the patch equally on both sides with air."""
    before, widths = [], []
    for size, patch in zip(volume.shape, preprocessing.patch_size, strict=True):
        total = max(patch - size, 0)
        before.append(total // 2)
        widths.append((total // 2, total - total // 2))
    if not any(total for pair in widths for total in pair):
        return volume, (0, 0, 0)
    air = float(preprocessing.normalize(np.array([preprocessing.ct_clip[0]]))[0])
    padded = np.pad(volume, widths, mode="constant", constant_values=air)
    return padded, (before[0], before[1], before[2])


def _warn_about_dense_windows(grid: WindowGrid, step_size: float) -> None:
    """Log a warning when ``step_size`` makes many times more windows than the usual 0.5."""
    if step_size >= 0.5:
        return
    usual = math.prod(
        len(window_starts(size, patch, 0.5))
        for size, patch in zip(grid.shape, grid.patch_size, strict=True)
    )
    if len(grid) >= 8 * usual:
        logger.warning(
            "step_size=%s places %d windows, %.0f times as many as step_size=0.5 (%d); "
            "prediction takes that much longer",
            step_size,
            len(grid),
            len(grid) / usual,
            usual,
        )


def _mirror_combinations(mirroring: Sequence[int] | None) -> list[tuple[int, ...]]:
    if mirroring is None:
        return [()]
    axes = [int(axis) for axis in mirroring]
    if any(axis not in (0, 1, 2) for axis in axes) or len(set(axes)) != len(axes):
        raise ValueError(
            f"mirroring must list distinct array axes out of 0 (z), 1 (y), 2 (x), got {mirroring}"
        )
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def _autocast_dtype(precision: str | None, device: torch.device) -> torch.dtype | None:
    if precision is None:
        return None
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be 'bf16', 'fp16' or None, got {precision!r}")
    dtype = _PRECISIONS[precision]
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(
            f"autocast is not available on device {device}; use precision=None on this device"
        )
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"device {device} does not support bfloat16; use precision='fp16'")
    if device.type == "cpu" and dtype == torch.float16:
        warnings.warn(
            "precision='fp16' on the CPU runs many times slower than 'bf16' or float32 "
            "(8 to 24 times slower than float32 on small CT crops, measured on a 2-core x86 "
            "CPU with torch 2.14); use "
            "precision='bf16' there",
            stacklevel=3,
        )
    return dtype
