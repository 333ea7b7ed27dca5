"""Image files to float arrays in [0, 1]: PNG, JPEG and other PIL formats, and DICOM by suffix.

Depth is kept until normalisation: 16-bit PNGs and 12/16-bit DICOM pixels are mapped to [0, 1]
in float32 and only then resized. DICOM (pydicom, the `[dicom]` extra) applies the modality
LUT (rescale slope/intercept), then the VOI LUT or the first window (DICOM's LINEAR,
LINEAR_EXACT or SIGMOID functions) or, with neither, the image's own min-max; MONOCHROME1 is
inverted so bone is bright in every image. Compressed transfer syntaxes decode through
pydicom's pixel handlers where one is installed. Every bad file raises `DecodeError`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from vlp.data.sample import DataError

DICOM_SUFFIXES = (".dcm", ".dicom")
_HIGH_DEPTH_SCALE = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I": 65535.0,
                     "F": 1.0}  # single-channel modes that "L" would clip, and their white
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # as PIL's convert("L")


class DecodeError(DataError):
    """An image file that cannot be used; `reason` is one of REASONS."""

    REASONS = ("missing_image", "unreadable_image", "no_pixel_data", "unsupported_compression")

    def __init__(self, path: str | Path, reason: str, detail: str):
        super().__init__(f"{path}: {reason}: {detail}")
        self.path, self.reason, self.detail = Path(path), reason, detail


def is_dicom(path: str | Path) -> bool:
    return Path(path).suffix.lower() in DICOM_SUFFIXES


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError:
        raise DataError("DICOM images need pydicom: pip install -e '.[dicom]'") from None
    return pydicom


def _read_dicom(path: Path | BinaryIO, header_only: bool, name: str | Path) -> Any:
    """The dataset, checked for pixel data and a decoder for its transfer syntax."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, defer_size="1 KB" if header_only else None)
    except Exception as exc:  # InvalidDicomError, truncated files, bad values, ...
        raise DecodeError(name, "unreadable_image", f"not a readable DICOM file ({exc})") from exc
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise DecodeError(name, "no_pixel_data", "the DICOM file has no pixel data")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        from pydicom.pixels.decoders.base import get_decoder

        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            decoder = None
        if decoder is None or not decoder.is_available:
            needs = "; ".join(getattr(decoder, "missing_dependencies", [])) or "a decoder"
            raise DecodeError(name, "unsupported_compression",
                              f"{syntax.name} needs {needs} (e.g. pip install pylibjpeg "
                              "pylibjpeg-openjpeg)")
    return ds


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2: a VOI window to [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    width = max(width, 1.0)  # LINEAR needs width >= 1
    if width == 1.0:
        return (values > center - 0.5).astype(np.float32)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _first(value: Any) -> float:
    """The first of a multi-valued element (WindowCenter may hold several windows)."""
    return float(value[0] if isinstance(value, Sequence) and not isinstance(value, str)
                 else value)


def dicom_to_float(ds: Any) -> np.ndarray:
    """(H, W) or (H, W, 3) float32 in [0, 1] from a DICOM dataset (first frame only)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    pixels = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # colour: pydicom returns RGB
        return pixels.astype(np.float32) / float(2 ** int(ds.BitsStored) - 1)
    modality = np.asarray(apply_modality_lut(pixels, ds))
    values = modality.astype(np.float64)
    if "VOILUTSequence" in ds:  # a table indexed by (integer) modality values
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        indices = modality if modality.dtype.kind in "iu" else np.rint(modality).astype(np.int64)
        grey = apply_voi_lut(indices, ds, index=0) / float(2 ** bits - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        grey = _window(values, _first(ds.WindowCenter), _first(ds.WindowWidth),
                       str(ds.get("VOILUTFunction", "LINEAR")).upper())
    else:
        low, high = float(values.min()), float(values.max())
        grey = (values - low) / (high - low) if high > low else np.zeros_like(values)
    grey = np.clip(grey, 0.0, 1.0).astype(np.float32)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        grey = 1.0 - grey  # MONOCHROME1: the lowest value is white
    return grey


def check_image(path: Path) -> None:
    """Cheap check that `path` will decode (PIL verify, or the DICOM header); else DecodeError."""
    if not path.is_file():
        raise DecodeError(path, "missing_image", "image file not found")
    if is_dicom(path):
        _read_dicom(path, header_only=True, name=path)
        return
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as exc:  # PIL raises assorted types (OSError, SyntaxError, ...) on bad files
        raise DecodeError(path, "unreadable_image", f"cannot read image: {exc}") from exc


def _resize(array: np.ndarray, in_chans: int, size: int) -> np.ndarray:
    """(H, W) or (H, W, 3) float [0, 1] -> (C, size, size), resized in float (no 8-bit step)."""
    if array.ndim == 3 and in_chans == 1:
        array = array @ _LUMA
    planes = [array] if array.ndim == 2 else [array[..., c] for c in range(3)]
    resized = [np.asarray(Image.fromarray(np.ascontiguousarray(p, dtype=np.float32))
                          .resize((size, size), Image.Resampling.BILINEAR)) for p in planes]
    out = np.clip(np.stack(resized), 0.0, 1.0)
    return np.repeat(out, in_chans, axis=0) if out.shape[0] == 1 else out


def _load_pil(path: Path | BinaryIO, in_chans: int, size: int) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode in _HIGH_DEPTH_SCALE:
            return _resize(np.asarray(im, dtype=np.float32) / _HIGH_DEPTH_SCALE[im.mode],
                           in_chans, size)
        converted = im.convert("L" if in_chans == 1 else "RGB")
        resized = converted.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(resized, dtype=np.float32) / 255.0
        return arr[None] if in_chans == 1 else arr.transpose(2, 0, 1)


def _dicom_float(source: Path | BinaryIO, name: str | Path) -> np.ndarray:
    ds = _read_dicom(source, header_only=False, name=name)
    try:
        return dicom_to_float(ds)
    except Exception as exc:  # a decoder failing on this file's pixel data
        raise DecodeError(name, "unreadable_image", f"pixel data: {exc}") from exc


def _decode(source: Path | BinaryIO, dicom: bool, name: str | Path, in_chans: int,
            size: int) -> np.ndarray:
    if dicom:
        return _resize(_dicom_float(source, name), in_chans, size)
    try:
        return _load_pil(source, in_chans, size)
    except Exception as exc:  # PIL raises assorted types (OSError, SyntaxError, ...)
        raise DecodeError(name, "unreadable_image", str(exc)) from exc


def decode_image(path: str | Path) -> np.ndarray:
    """The whole image at its own size: (H, W) grey or (H, W, 3) RGB, float32 in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise DecodeError(path, "missing_image", "image file not found")
    if is_dicom(path):
        return _dicom_float(path, path)
    try:
        with Image.open(path) as im:
            if im.mode in _HIGH_DEPTH_SCALE:
                return np.asarray(im, dtype=np.float32) / _HIGH_DEPTH_SCALE[im.mode]
            if im.mode in ("L", "LA", "1"):
                return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
            return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except Exception as exc:
        raise DecodeError(path, "unreadable_image", f"cannot read image: {exc}") from exc


def load_image(path: str | Path, in_chans: int, size: int) -> np.ndarray:
    """(C, size, size) float32 in [0, 1] from a PNG/JPEG/... or DICOM file; else DecodeError."""
    path = Path(path)
    if not path.is_file():
        raise DecodeError(path, "missing_image", "image file not found")
    return _decode(path, is_dicom(path), path, in_chans, size)


def load_image_bytes(data: bytes, suffix: str, in_chans: int, size: int, name: str
                     ) -> np.ndarray:
    """As `load_image`, from a file's bytes (e.g. a tar shard member); `suffix` picks DICOM."""
    return _decode(io.BytesIO(data), is_dicom(f"x.{suffix.lstrip('.')}"), name, in_chans, size)
