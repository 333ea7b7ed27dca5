"""DICOM decoding (pydicom's own test files and files written here) and mixed-format manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlp.data.demo import demo_reports
from vlp.data.images import DecodeError, check_image, load_image

pydicom = pytest.importorskip("pydicom")
from dicom_files import write_dicom  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402


def bundled(name: str):
    path = get_testdata_file(name, download=False)  # shipped inside pydicom: never downloaded
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    return path


def full_size(path) -> np.ndarray:
    """Decoded at its own (square) size: the resize step is then the identity."""
    ds = pydicom.dcmread(path)
    assert ds.Rows == ds.Columns
    return load_image(path, 1, ds.Rows)[0]


def test_ct_rescale_then_min_max_without_a_window():
    path = bundled("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hounsfield = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(
        ds.RescaleIntercept)
    expected = (hounsfield - hounsfield.min()) / (hounsfield.max() - hounsfield.min())
    np.testing.assert_allclose(full_size(path), expected, atol=1e-6)


def test_mr_window_and_compressed_copy_decode_alike():
    plain, rle = bundled("MR_small.dcm"), bundled("MR_small_RLE.dcm")
    ds = pydicom.dcmread(plain)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)  # DICOM LINEAR, by hand
    expected = np.clip((ds.pixel_array - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(full_size(plain), expected, atol=1e-6)
    np.testing.assert_array_equal(full_size(rle), full_size(plain))  # RLE: pydicom's handler


def test_written_monochrome1_rescale_window_and_depth(tmp_path):
    gradient = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)  # 4096 levels: 12 bits
    m2 = load_image(write_dicom(tmp_path / "m2.dcm", gradient), 1, 64)[0]
    m1 = load_image(write_dicom(tmp_path / "m1.dcm", gradient, photometric="MONOCHROME1"),
                    1, 64)[0]
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)  # MONOCHROME1: low values are white
    assert len(np.unique(m2)) == 4096  # no 8-bit step before normalisation
    np.testing.assert_allclose(m2, gradient / 4095.0, atol=1e-6)
    # rescale (slope 2, intercept -1000) then window centre 1000, width 2001 (LINEAR)
    pixels = np.array([[0, 500, 1000, 1500], [2000, 2500, 3000, 4095]] * 2, dtype=np.uint16)
    path = write_dicom(tmp_path / "win.dcm", pixels, slope=2.0, intercept=-1000.0,
                       window=(1000.0, 2001.0))
    values = pixels * 2.0 - 1000.0
    expected = np.clip((values - 999.5) / 2000.0 + 0.5, 0.0, 1.0)
    from vlp.data.images import dicom_to_float

    np.testing.assert_allclose(dicom_to_float(pydicom.dcmread(path)), expected, atol=1e-6)
    assert load_image(path, 3, 16).shape == (3, 16, 16)


def test_voi_lut_sequence_maps_through_the_table(tmp_path):
    from vlp.data.images import dicom_to_float

    pixels = np.array([[0, 99, 100, 101], [102, 103, 104, 4000]], dtype=np.uint16)
    table = [0, 1000, 3000, 4095]  # 12-bit entries for stored values 100..103
    path = write_dicom(tmp_path / "lut.dcm", pixels, voi_lut=(100, 12, table))
    # by hand: below the first entry -> the first value, above the last -> the last
    expected = np.array([[0, 0, 0, 1000], [3000, 4095, 4095, 4095]]) / 4095.0
    np.testing.assert_allclose(dicom_to_float(pydicom.dcmread(path)), expected, atol=1e-6)


def test_dicom_without_pixel_data_raises_one_clear_error(tmp_path):
    for path in (bundled("rtplan.dcm"),
                 write_dicom(tmp_path / "empty.dcm", np.zeros((4, 4)), with_pixels=False)):
        with pytest.raises(DecodeError) as info:
            check_image(Path(path))
        assert info.value.reason == "no_pixel_data"
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(DecodeError, match="unreadable_image"):
        load_image(tmp_path / "junk.dcm", 1, 8)


def test_compression_without_a_handler_is_a_clear_error(monkeypatch):
    import pydicom.pixels.decoders.base as decoders

    class Missing:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg>=2.0"]

    monkeypatch.setattr(decoders, "get_decoder", lambda uid: Missing())
    with pytest.raises(DecodeError, match="pylibjpeg") as info:
        check_image(Path(bundled("MR_small_RLE.dcm")))
    assert info.value.reason == "unsupported_compression"
    check_image(Path(bundled("MR_small.dcm")))  # uncompressed needs no handler


def test_manifest_mixing_png_jpeg_and_dicom_trains(write_recipe, tmp_path):
    from vlp.core.recipe import load_recipe
    from vlp.core.trainer import train
    from vlp.eval.evaluate import retrieval_of_run

    rng = np.random.default_rng(0)
    rows = []
    for i, text in enumerate(demo_reports(30)):
        pixels = rng.integers(0, 4096, (40, 40))
        kind = ("png", "jpg", "dcm")[i % 3]
        if kind == "dcm":
            write_dicom(tmp_path / "img" / f"{i}.dcm", pixels,
                        photometric=("MONOCHROME1", "MONOCHROME2")[i % 2])
        else:
            (tmp_path / "img").mkdir(exist_ok=True)
            Image.fromarray((pixels // 16).astype(np.uint8)).save(tmp_path / "img" / f"{i}.{kind}")
        rows.append({"image": f"img/{i}.{kind}", "text": text})
    write_dicom(tmp_path / "img" / "nopixels.dcm", np.zeros((4, 4)), with_pixels=False)
    rows.append({"image": "img/nopixels.dcm", "text": "Clear lungs."})
    rows.append({"image": "img/absent.dcm", "text": "No effusion."})
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_recipe(f"""
        _base_: tiny_base.yaml
        data: {{_replace_: true, source: manifest, path: {manifest}, image_size: 32,
                val_fraction: 0.2}}
        objectives: {{itc: {{weight: 1.0}}}}
        trainer: {{max_steps: 2}}
        eval: {{ks: [1, 5]}}
    """)
    result = train(load_recipe(path), out=tmp_path / "run", evaluate=retrieval_of_run)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["retrieval"]["n"] == 6
    assert summary["skipped_rows"] == {"unreadable_image": 1, "missing_image": 1}
