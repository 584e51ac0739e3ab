"""Optional clean-up of predicted masks: largest connected component and body mask.

A network trained on many partially labeled datasets predicts some false
positives outside the field of view of each source dataset, for example organs
in the air around the patient or on the table. MultiTalent itself applies no
post-processing; its authors recommend removing predictions outside plausible
body regions, which the ``"body"`` step does.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

__all__ = [
    "BODY_THRESHOLD_HU",
    "POSTPROCESSING_STEPS",
    "body_mask",
    "keep_largest_component",
    "resolve_postprocessing",
]

POSTPROCESSING_STEPS = ("body", "largest_component")
"""Names accepted by ``Predictor.predict(postprocess=...)``, applied in this order."""

BODY_THRESHOLD_HU = -500.0
"""Voxels above this value (Hounsfield units) count as body before the clean-up."""


def resolve_postprocessing(postprocess: str | Sequence[str] | None) -> tuple[str, ...]:
    """Check post-processing step names and return them in the order they run.

    Args:
        postprocess: None, one step name or several, from :data:`POSTPROCESSING_STEPS`.

    Returns:
        The requested steps in the order of :data:`POSTPROCESSING_STEPS`.

    Raises:
        ValueError: If a name is unknown; the message suggests the closest name.

    Example:
        >>> resolve_postprocessing(["largest_component", "body"])
        ('body', 'largest_component')
    """
    if postprocess is None:
        return ()
    names = [postprocess] if isinstance(postprocess, str) else list(postprocess)
    for name in names:
        if name not in POSTPROCESSING_STEPS:
            close = difflib.get_close_matches(str(name), POSTPROCESSING_STEPS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown post-processing step {name!r}{hint} (valid: {list(POSTPROCESSING_STEPS)})"
            )
    return tuple(step for step in POSTPROCESSING_STEPS if step in names)


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Return ``mask`` with only its largest 26-connected component.

    Args:
        mask: A uint8 or bool mask (z, y, x).

    Returns:
        A uint8 mask; all zeros if ``mask`` is empty.

    Example:
        >>> mask = np.zeros((1, 1, 7), np.uint8)
        >>> mask[0, 0, [0, 1, 4, 5, 6]] = 1
        >>> keep_largest_component(mask)[0, 0].tolist()
        [0, 0, 0, 0, 1, 1, 1]
    """
    image = sitk.GetImageFromArray(np.asarray(mask, dtype=np.uint8))
    labels = sitk.ConnectedComponent(image, True)
    largest = sitk.RelabelComponent(labels, sortByObjectSize=True) == 1
    return sitk.GetArrayFromImage(largest).astype(np.uint8, copy=False)


def axial_axis(image: sitk.Image) -> int:
    """Return the array axis (0 = z, 1 = y, 2 = x) closest to the patient's head-foot axis.

    Example:
        >>> axial_axis(sitk.Image([4, 4, 4], sitk.sitkInt16))
        0
    """
    direction = np.array(image.GetDirection()).reshape(3, 3)
    index_axis = int(np.argmax(np.abs(direction[2])))
    return 2 - index_axis


def body_mask(image: sitk.Image, *, threshold: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """Estimate the patient's body in a CT image.

    Voxels above ``threshold`` HU are kept, and only their largest 26-connected
    component remains. That drops noise in the air and the table where it does
    not touch the patient. Holes are then filled in every axial slice, so the
    lungs and bowel gas count as body. The slices are taken along the array
    axis closest to the head-foot direction, see :func:`axial_axis`.

    Args:
        image: CT in Hounsfield units.
        threshold: Intensity threshold in HU.

    Returns:
        A uint8 mask (z, y, x) on the image grid.

    Example:
        >>> array = np.full((3, 9, 9), -1000, np.int16)
        >>> array[:, 2:7, 2:7] = 40
        >>> array[:, 4, 4] = -900
        >>> mask = body_mask(sitk.GetImageFromArray(array))
        >>> int(mask.sum()), int(mask[1, 4, 4])
        (75, 1)
    """
    labels = sitk.ConnectedComponent(image > threshold, True)
    body = sitk.RelabelComponent(labels, sortByObjectSize=True) == 1
    array = sitk.GetArrayFromImage(body).astype(np.uint8, copy=False)
    axis = axial_axis(image)
    for index in range(array.shape[axis]):
        slicer = [slice(None)] * 3
        slicer[axis] = index
        plane = sitk.GetImageFromArray(np.ascontiguousarray(array[tuple(slicer)]))
        array[tuple(slicer)] = sitk.GetArrayFromImage(sitk.BinaryFillhole(plane))
    return array
