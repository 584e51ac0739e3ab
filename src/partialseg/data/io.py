"""Reading and writing CT volumes and label maps with SimpleITK, keeping geometry."""

from __future__ import annotations

import gzip
import logging
import os
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import SimpleITK as sitk

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


class ImageReadError(ValueError):
    """An image file exists but cannot be read as a 3D image."""


class GeometryMismatchError(ValueError):
    """Two images that must share a voxel grid do not."""


def read_image(path: str | os.PathLike[str]) -> sitk.Image:
    """Read a 3D image from a file (NIfTI, NRRD, MHA) or a DICOM series folder.

    Args:
        path: An image file, or a folder holding exactly one DICOM series.

    Returns:
        The image with its size, spacing, origin and direction.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImageReadError: The file is corrupt, not an image, or not 3D, a NIfTI
            file contains NaN or infinite values (which ITK's NIfTI reader would
            return as 0), or the slices of a DICOM series are unevenly spaced.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> write_image(sitk.Image([4, 5, 6], sitk.sitkInt16), folder / "ct.nii.gz")
        >>> read_image(folder / "ct.nii.gz").GetSize()
        (4, 5, 6)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if path.suffix == ".nii":
        _check_nifti_size(path)
    if path.suffix in (".gz", ".nii"):
        _check_stream(path)
    try:
        image = _read_dicom_series(path) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        raise ImageReadError(
            f"could not read {path} as an image ({first_line}); check that the file is a "
            "complete NIfTI, NRRD, MHA file or a DICOM series folder"
        ) from error
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(
            f"{path} must be a single-channel 3D image, got dimension {image.GetDimension()} "
            f"with {image.GetNumberOfComponentsPerPixel()} component(s) per voxel"
        )
    return image


# NIfTI-1 datatype codes of floating-point voxels and their numpy types.
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def _check_stream(path: Path, chunk_size: int = 1 << 24) -> None:
    """Read a file once: a gzip stream must decompress to its end, NIfTI floats must be finite.

    ITK's NIfTI reader (SimpleITK 2.5) fills the missing part of a truncated
    ``.nii.gz`` with zeros and returns NaN and infinite voxels as 0, so neither
    raises an error there.
    """
    compressed = path.suffix == ".gz"
    try:
        with (gzip.open if compressed else open)(path, "rb") as stream:
            header = stream.read(348)
            is_nifti = path.name.endswith((".nii", ".nii.gz"))
            dtype = _nifti_float_dtype(header) if is_nifti else None
            if dtype is not None:
                nan_count, infinite_count = _count_non_finite(stream, header, dtype, chunk_size)
            elif compressed:
                while stream.read(chunk_size):
                    pass
    except (EOFError, OSError, zlib.error) as error:
        if not compressed:
            raise
        raise ImageReadError(
            f"{path} is truncated or corrupt ({error}); download or export it again"
        ) from error
    if dtype is not None and (nan_count or infinite_count):
        raise ImageReadError(
            f"{path} contains {nan_count} NaN and {infinite_count} infinite voxels, which "
            "SimpleITK would read as 0; replace them (for example with -1024 HU, air) and "
            "save the image again"
        )


def _nifti_float_dtype(header: bytes) -> np.dtype | None:
    """Return the numpy dtype of a NIfTI-1 header's voxels if they are floats, else None."""
    if len(header) < 348:
        return None
    order = "<" if np.frombuffer(header[:4], "<i4")[0] == 348 else ">"
    datatype = int(np.frombuffer(header[70:72], f"{order}i2")[0])
    if datatype not in _NIFTI_FLOAT_TYPES:
        return None
    return np.dtype(order + _NIFTI_FLOAT_TYPES[datatype])


def _count_non_finite(
    stream: BinaryIO, header: bytes, dtype: np.dtype, chunk_size: int
) -> tuple[int, int]:
    """Count the NaN and infinite voxels after the header, reading ``stream`` to its end."""
    order = dtype.str[0]
    offset = int(np.frombuffer(header[108:112], f"{order}f4")[0])
    stream.read(max(offset - 348, 0))
    nan_count = infinite_count = 0
    remainder = b""
    while chunk := stream.read(chunk_size):
        chunk = remainder + chunk
        usable = len(chunk) - len(chunk) % dtype.itemsize
        values = np.frombuffer(chunk[:usable], dtype)
        nan_count += int(np.isnan(values).sum())
        infinite_count += int(np.isinf(values).sum())
        remainder = chunk[usable:]
    return nan_count, infinite_count


def _check_nifti_size(path: Path) -> None:
    """Raise unless an uncompressed NIfTI file holds all the voxels its header declares.

    ITK reads the missing part of a truncated ``.nii`` as zeros without an error.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ImageReadError(f"could not read the NIfTI header of {path}: {error}") from error
    voxels = int(np.prod(reader.GetSize())) * reader.GetNumberOfComponents()
    bytes_per_voxel = np.dtype(_SITK_NUMPY_TYPES.get(reader.GetPixelIDValue(), np.uint8))
    expected = 348 + voxels * bytes_per_voxel.itemsize
    if path.stat().st_size < expected:
        raise ImageReadError(
            f"{path} is truncated: its header declares {voxels} voxels "
            f"({expected} bytes with the header) but the file has {path.stat().st_size} bytes; "
            "export it again"
        )


_SITK_NUMPY_TYPES = {
    sitk.sitkUInt8: np.uint8,
    sitk.sitkInt8: np.int8,
    sitk.sitkUInt16: np.uint16,
    sitk.sitkInt16: np.int16,
    sitk.sitkUInt32: np.uint32,
    sitk.sitkInt32: np.int32,
    sitk.sitkUInt64: np.uint64,
    sitk.sitkInt64: np.int64,
    sitk.sitkFloat32: np.float32,
    sitk.sitkFloat64: np.float64,
}


def read_image_information(path: str | os.PathLike[str]) -> sitk.ImageFileReader:
    """Read only the header of a 3D image file (size, spacing, origin, direction).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImageReadError: The header cannot be read or the image is not 3D.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ImageReadError(
            f"could not read the header of {path}; check that it is a NIfTI, NRRD or MHA image"
        ) from error
    if reader.GetDimension() != 3:
        raise ImageReadError(f"{path} must be a 3D image, got dimension {reader.GetDimension()}")
    return reader


def _read_dicom_series(folder: Path) -> sitk.Image:
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise ImageReadError(f"no DICOM series found in folder {folder}")
    if len(series_ids) > 1:
        raise ImageReadError(
            f"folder {folder} holds {len(series_ids)} DICOM series; pass a folder with one series"
        )
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    _check_slice_positions(reader, image, folder)
    return image


def _check_slice_positions(
    reader: sitk.ImageSeriesReader, image: sitk.Image, folder: Path, tolerance: float = 0.1
) -> None:
    """Raise if the slices of a DICOM series are not evenly spaced along their normal.

    ITK stacks a series with a missing or duplicated slice onto an even grid with
    only a printed warning, which misplaces every slice after the gap.
    """
    count = image.GetSize()[2]
    if count < 3:
        return
    normal = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)[:, 2]
    positions = []
    for index in range(count):
        if not reader.HasMetaDataKey(index, "0020|0032"):
            return
        text = reader.GetMetaData(index, "0020|0032")
        positions.append(float(np.dot([float(v) for v in text.split("\\")], normal)))
    steps = np.diff(np.sort(positions))
    median = float(np.median(steps))
    worst = int(np.argmax(np.abs(steps - median)))
    if median <= 0 or abs(steps[worst] - median) > tolerance * median:
        raise ImageReadError(
            f"the DICOM series in {folder} is not evenly spaced: slices are {median:.3g} mm "
            f"apart, but slices {worst} and {worst + 1} (in position order) are "
            f"{steps[worst]:.3g} mm apart, so a slice is missing or duplicated; export the "
            "complete series"
        )


def write_image(image: sitk.Image, path: str | os.PathLike[str], *, compress: bool = True) -> None:
    """Write ``image`` to ``path`` atomically (a temporary file, then a rename).

    Args:
        image: The image to write.
        path: Target file; the suffix selects the format (``.nii.gz``, ``.nrrd``, ...).
        compress: Use the format's compression where it has one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=suffix)
    os.close(descriptor)
    try:
        sitk.WriteImage(image, temporary, compress)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def check_same_grid(
    image: sitk.Image,
    label: sitk.Image,
    *,
    image_name: str = "image",
    label_name: str = "label",
    tolerance: float = 1e-3,
) -> None:
    """Raise unless ``image`` and ``label`` share size, spacing, origin and direction.

    Args:
        image: The reference image.
        label: The image that must lie on the same voxel grid.
        image_name: Name of the image in the error message (usually its path).
        label_name: Name of the label map in the error message.
        tolerance: Absolute tolerance for spacing, origin (mm) and direction cosines.

    Raises:
        GeometryMismatchError: A property differs; the message names both values.
    """
    checks = {
        "size": (image.GetSize(), label.GetSize(), 0.0),
        "spacing": (image.GetSpacing(), label.GetSpacing(), tolerance),
        "origin": (image.GetOrigin(), label.GetOrigin(), tolerance),
        "direction": (image.GetDirection(), label.GetDirection(), tolerance),
    }
    for prop, (expected, received, tol) in checks.items():
        if not np.allclose(expected, received, rtol=0.0, atol=tol):
            raise GeometryMismatchError(
                f"{label_name} does not lie on the grid of {image_name}: {prop} "
                f"{_rounded(received)} vs {_rounded(expected)}; "
                "resample the label map onto the image grid (nearest neighbour) first"
            )


def _rounded(values: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(round(v, 4) for v in values)


def image_stem(path: str | os.PathLike[str]) -> str:
    """Return the file name without its image suffix (``ct.nii.gz`` gives ``ct``).

    Example:
        >>> image_stem("/data/case_001_0000.nii.gz")
        'case_001_0000'
    """
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
