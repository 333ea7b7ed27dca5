"""Manifest data sets: formats, configurable columns, bad rows counted or raised, splits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlp.data.manifest import ManifestDataset, split_indices
from vlp.data.sample import DataError


def png(path: Path, value: int = 128, size: tuple[int, int] = (10, 8)) -> str:
    """A uniform grey PNG; returns its file name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path.name


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def blake_id(text: str) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def test_csv_rows_load_as_pairs(tmp_path: Path):
    for i, value in enumerate((0, 128, 255)):
        png(tmp_path / f"img{i}.png", value)
    manifest = write(tmp_path / "m.csv", [
        "image,text,extra",
        "img0.png,Black image.,x",
        'img1.png,"Grey, with a comma.",y',
        "img2.png,White image.,z",
    ])
    ds = ManifestDataset(manifest, image_size=16)
    assert len(ds) == ds.num_rows == 3 and sum(ds.skipped.values()) == 0 and ds.bad_rows == []
    pair = ds[1]
    assert pair.image.shape == (1, 16, 16) and pair.image.dtype == torch.float32
    assert torch.allclose(pair.image, torch.full((1, 16, 16), 128 / 255))
    assert pair.text == "Grey, with a comma." and pair.sample_id == 2
    assert [ds[i].sample_id for i in range(3)] == [1, 2, 3]
    assert ds[0].image.max() == 0 and ds[2].image.min() == 1
    assert ds.texts == ["Black image.", "Grey, with a comma.", "White image."]


def test_tsv_with_custom_columns_ids_and_image_root(tmp_path: Path):
    png(tmp_path / "images" / "a.png")
    png(tmp_path / "images" / "b.png")
    (tmp_path / "lists").mkdir()
    manifest = write(tmp_path / "lists" / "m.tsv", [
        "study\tpath\treport",
        "s-001\ta.png\tFirst report.",
        "42\tb.png\tSecond report.",
    ])
    ds = ManifestDataset(manifest, image_root=tmp_path / "images", image_column="path",
                         text_column="report", id_column="study", image_size=8, in_chans=3)
    assert len(ds) == 2
    assert ds[0].sample_id == blake_id("s-001") and ds[1].sample_id == 42
    assert 0 <= ds[0].sample_id < 2**63
    assert ds[0].image.shape == (3, 8, 8) and ds[1].text == "Second report."


def test_jsonl_with_absolute_paths_blank_and_malformed_lines(tmp_path: Path):
    absolute = tmp_path / "elsewhere" / "x.png"
    png(absolute)
    png(tmp_path / "y.png")
    manifest = write(tmp_path / "m.jsonl", [
        json.dumps({"image": str(absolute), "text": "Absolute.", "id": 7}),
        "",
        "{not json",
        json.dumps({"image": "y.png", "text": "Relative.", "id": "abc"}),
        json.dumps(["a", "list"]),
        json.dumps({"image": "y.png", "id": 9}),
    ])
    ds = ManifestDataset(manifest, id_column="id", image_size=4)
    assert len(ds) == 2 and ds.num_rows == 5
    assert [ds[0].sample_id, ds[1].sample_id] == [7, blake_id("abc")]
    assert ds.skipped["malformed_row"] == 3
    assert ds.bad_rows == [(2, "malformed_row"), (4, "malformed_row"), (5, "malformed_row")]


def test_json_suffix_and_explicit_format(tmp_path: Path):
    png(tmp_path / "a.png")
    line = json.dumps({"image": "a.png", "text": "Report."})
    assert len(ManifestDataset(write(tmp_path / "m.json", [line]))) == 1
    assert len(ManifestDataset(write(tmp_path / "m.txt", [line]), fmt="jsonl")) == 1
    with pytest.raises(ValueError, match="fmt"):
        ManifestDataset(tmp_path / "m.txt")


def bad_manifest(tmp_path: Path) -> Path:
    png(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"this is not an image")
    return write(tmp_path / "bad.csv", [
        "image,text",
        "good.png,Fine report.",  # row 1
        "absent.png,Report.",  # row 2: missing_image
        "broken.png,Report.",  # row 3: unreadable_image
        "good.png,   ",  # row 4: empty_text
        "good.png,too,many",  # row 5: malformed_row
        "",  # blank line, not a data row
        "good.png,Second fine report.",  # row 6
        ",Report without image.",  # row 7: missing_image
    ])


def test_bad_rows_are_counted_with_row_numbers(tmp_path: Path):
    ds = ManifestDataset(bad_manifest(tmp_path), image_size=4)
    assert len(ds) == 2 and ds.num_rows == 7
    assert ds.skipped == {"missing_image": 2, "unreadable_image": 1, "empty_text": 1,
                          "malformed_row": 1}
    assert ds.bad_rows == [(2, "missing_image"), (3, "unreadable_image"), (4, "empty_text"),
                           (5, "malformed_row"), (7, "missing_image")]
    assert [ds[i].sample_id for i in range(2)] == [1, 6]


def test_strict_mode_raises_on_the_first_bad_row(tmp_path: Path):
    with pytest.raises(DataError) as info:
        ManifestDataset(bad_manifest(tmp_path), strict=True)
    message = str(info.value)
    assert "bad.csv" in message and "data row 2" in message and "missing_image" in message
    assert "absent.png" in message


def test_strict_mode_names_the_row_of_a_malformed_jsonl_line(tmp_path: Path):
    png(tmp_path / "a.png")
    manifest = write(tmp_path / "m.jsonl", [json.dumps({"image": "a.png", "text": "Ok."}),
                                            '{"image": "a.png", "text": '])
    with pytest.raises(DataError, match=r"m\.jsonl: data row 2 .*malformed_row"):
        ManifestDataset(manifest, strict=True)


def test_missing_column_is_reported_with_the_columns_found(tmp_path: Path):
    manifest = write(tmp_path / "m.csv", ["path,report", "a.png,Report."])
    with pytest.raises(DataError) as info:
        ManifestDataset(manifest)
    message = str(info.value)
    assert "m.csv" in message and "'image'" in message and "'text'" in message
    assert "'path'" in message and "'report'" in message
    with pytest.raises(DataError, match="'study'"):
        ManifestDataset(manifest, image_column="path", text_column="report",
                        id_column="study")


def test_bad_rows_list_is_capped_but_counts_are_not(tmp_path: Path):
    lines = ["image,text"] + [f"missing{i}.png,Report {i}." for i in range(150)]
    ds = ManifestDataset(write(tmp_path / "m.csv", lines))
    assert len(ds) == 0 and ds.skipped["missing_image"] == 150 and len(ds.bad_rows) == 100
    assert ds.bad_rows[-1] == (100, "missing_image")


def test_rgb_and_sixteen_bit_images(tmp_path: Path):
    Image.new("RGB", (6, 6), (255, 0, 51)).save(tmp_path / "rgb.png")
    deep = np.full((6, 6), 30000, dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    manifest = write(tmp_path / "m.csv", ["image,text", "rgb.png,Colour.", "deep.png,Deep."])
    rgb = ManifestDataset(manifest, image_size=6, in_chans=3)[0].image
    assert torch.allclose(rgb[:, 0, 0], torch.tensor([1.0, 0.0, 0.2]))
    grey = ManifestDataset(manifest, image_size=6)[1].image
    assert torch.allclose(grey, torch.full((1, 6, 6), 30000 / 65535), atol=1e-4)


def test_image_removed_after_construction_raises_data_error(tmp_path: Path):
    png(tmp_path / "a.png")
    ds = ManifestDataset(write(tmp_path / "m.csv", ["image,text", "a.png,Report."]))
    (tmp_path / "a.png").unlink()
    with pytest.raises(DataError, match="a.png"):
        ds[0]


def test_split_indices_is_a_deterministic_partition():
    train, val = split_indices(100, 0.2, seed=3)
    assert len(val) == 20 and sorted(train + val) == list(range(100))
    assert (train, val) == split_indices(100, 0.2, seed=3)
    assert val != split_indices(100, 0.2, seed=4)[1]
    assert len(split_indices(10, 0.01, seed=0)[1]) == 1  # never an empty held-out set
    with pytest.raises(ValueError):
        split_indices(10, 1.0, seed=0)
