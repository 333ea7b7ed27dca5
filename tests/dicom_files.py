"""Writes small DICOM files with pydicom, as scanners store them (for tests and benchmarks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2",
                bits_stored: int = 12, slope: float | None = None,
                intercept: float | None = None, window: tuple[float, float] | None = None,
                voi_lut: tuple[int, int, list[int]] | None = None,
                with_pixels: bool = True) -> Path:
    """An uncompressed 16-bit-allocated greyscale DICOM image (CR) with the given tags;
    `voi_lut` is (first mapped value, bits per entry, LUT data)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    cr_storage = "1.2.840.10008.5.1.4.1.1.1"
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = cr_storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = cr_storage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", "TEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0.0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        first, bits, data = voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(data), first, bits]
        item.add_new("LUTData", "OW", np.asarray(data, dtype=np.uint16).tobytes())
        ds.VOILUTSequence = [item]
    if with_pixels:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
