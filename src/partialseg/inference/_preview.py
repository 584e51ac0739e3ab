"""PNG preview of a few axial slices with the predicted masks overlaid, without matplotlib."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk

# Soft-tissue window (level 40 HU, width 400 HU).
WINDOW_HU = (-160.0, 240.0)

# Distinct, colour-blind friendly colours (Okabe and Ito, 2008), then a few more.
PALETTE = np.array(
    [
        (230, 159, 0),
        (86, 180, 233),
        (0, 158, 115),
        (240, 228, 66),
        (0, 114, 178),
        (213, 94, 0),
        (204, 121, 167),
        (255, 255, 255),
        (170, 68, 153),
        (136, 204, 238),
        (68, 170, 153),
        (221, 204, 119),
    ],
    dtype=np.float32,
)


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode an 8-bit RGB image ``(height, width, 3)`` as a PNG file.

    Example:
        >>> encode_png(np.zeros((2, 3, 3), np.uint8))[1:4]
        b'PNG'
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array (height, width, 3), got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    # Every scanline starts with its filter type; 0 means unfiltered.
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, -1)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6)),
            _png_chunk(b"IEND", b""),
        ]
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    checksum = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)


def render_preview(
    image: sitk.Image, masks: Mapping[str, sitk.Image], *, num_slices: int = 3
) -> np.ndarray:
    """Render axial slices side by side with each class in its own colour at 50 % opacity.

    The image and masks are reoriented to LPS first, so patient right is on the
    left of each slice and anterior at the top (radiological convention). The
    slices are spread evenly over the z-range that contains any mask, or over
    the whole volume when all masks are empty.

    Args:
        image: CT in Hounsfield units.
        masks: uint8 masks on the grid of ``image``, in drawing order.
        num_slices: Number of slices.

    Returns:
        An RGB uint8 array ``(height, num_slices * width, 3)``.
    """
    volume = sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS")).astype(np.float32)
    low, high = WINDOW_HU
    gray = (np.clip(volume, low, high) - low) / (high - low) * 255.0

    # Reorient one mask at a time, so a preview of many classes keeps at most
    # one extra mask volume in memory.
    occupied = np.zeros(volume.shape[0], dtype=bool)
    for mask in masks.values():
        occupied |= _oriented_array(mask).any(axis=(1, 2))
    rows = np.flatnonzero(occupied)
    first, last = (rows[0], rows[-1]) if rows.size else (0, volume.shape[0] - 1)
    positions = np.linspace(first, last, num_slices + 2)[1:-1].round().astype(int)

    panels = [np.repeat(gray[z][..., None], 3, axis=2) for z in positions]
    for index, mask in enumerate(masks.values()):
        colour = PALETTE[index % len(PALETTE)]
        array = _oriented_array(mask)
        for panel, z in zip(panels, positions, strict=True):
            inside = array[z] > 0
            panel[inside] = 0.5 * panel[inside] + 0.5 * colour
    return np.concatenate(panels, axis=1).round().astype(np.uint8)


def _oriented_array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))
