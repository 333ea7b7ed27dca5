"""A newcomer's own data: the recipe in docs/data.md, grouped splits, paths, separate test sets."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from vlp.cli import main, train_main
from vlp.core.errors import RecipeError
from vlp.core.recipe import _DataCommon, load_recipe
from vlp.core.run import build_run
from vlp.core.yamlio import SHARED_ON_SOURCE_SWITCH
from vlp.data.demo import demo_reports
from vlp.data.loader import build_datasets
from vlp.data.manifest import split_groups

REPO = Path(__file__).parent.parent


def doc_recipe() -> str:
    """The example recipe of docs/data.md, verbatim."""
    text = (REPO / "docs" / "data.md").read_text()
    block = re.search(r"```yaml\n(# my_clip\.yaml\n.*?)```", text, re.S)
    assert block, "docs/data.md lost its example recipe"
    return block.group(1)


def write_manifest(folder: Path, n: int, patients: int, name: str = "reports.csv",
                   offset: int = 0) -> Path:
    """n PNGs under folder/images/ and a CSV (image, report, patient_id) beside them."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["image", "report", "patient_id"])
        for i, text in enumerate(demo_reports(n, offset=offset)):
            file = f"p{i % patients}/{offset + i}.png"
            (images / file).parent.mkdir(exist_ok=True)
            Image.new("L", (40, 40), color=(offset + i) * 7 % 256).save(images / file)
            out.writerow([file, text, f"patient-{i % patients}"])
    return path


SMALL = ["--set", "trainer.max_steps=2", "--set", "trainer.batch_size=8", "--set",
         "eval.ks=[1,5]", "--set", "data.min_val_size=5"]


def test_the_documented_recipe_trains_from_another_directory(tmp_path, monkeypatch, capsys):
    (tmp_path / "vlp").symlink_to(REPO)  # the doc's `_base_: ../vlp/recipes/clip.yaml`
    project = tmp_path / "project"
    project.mkdir()
    write_manifest(project, 60, patients=12)
    (project / "my_clip.yaml").write_text(doc_recipe())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert train_main(["../project/my_clip.yaml", "--out", "run", *SMALL]) == 0
    run = elsewhere / "run"
    saved = yaml.safe_load((run / "recipe.yaml").read_text())["data"]
    assert saved["path"] == str(project / "reports.csv")  # recorded absolute
    assert saved["image_root"] == str(project / "images")
    assert saved["image_size"] == 64 and saved["max_text_len"] == 64  # kept from the demo base
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2
    assert summary["retrieval"]["n"] == 10  # whole patients of 5 rows: 10% of 60 rounds up
    capsys.readouterr()
    third = tmp_path / "third"
    third.mkdir()
    monkeypatch.chdir(third)
    assert main(["eval", str(run)]) == 0  # the run folder works from anywhere
    assert json.loads(capsys.readouterr().out) == summary["retrieval"]


def test_grouped_split_keeps_every_patient_on_one_side(tmp_path, write_recipe):
    write_manifest(tmp_path, 90, patients=17)
    path = write_recipe("""
        _base_: tiny_base.yaml
        data: {source: manifest, path: reports.csv, text_column: report,
               image_root: images, group_column: patient_id, val_fraction: 0.3}
        objectives: {itc: {weight: 1.0}}
    """)
    data = build_datasets(load_recipe(path).spec.data)
    groups = data.train.dataset.groups
    train_groups = {groups[i] for i in data.train.indices}
    val_groups = {groups[i] for i in data.val.indices}
    assert train_groups and val_groups and not train_groups & val_groups
    assert len(train_groups | val_groups) == 17
    assert sorted([*data.train.indices, *data.val.indices]) == list(range(90))
    assert abs(len(data.val) - 27) <= 90 / 17 + 1  # about 30%, in whole patients


def test_split_groups_by_hand():
    groups = ["a", "a", "b", "c", "c", "c", "d"]
    train, val = split_groups(groups, 0.4, seed=3)
    assert sorted(train + val) == list(range(7))
    assert not {groups[i] for i in train} & {groups[i] for i in val}
    assert len(val) >= 0.4 * 7 and train  # enough held out, something left to train on
    assert split_groups(groups, 0.4, seed=3) == (train, val)
    assert split_groups(["x", "x", "y"], 0.9, seed=0)[0]  # the last group always trains


def test_source_switch_replaces_the_data_section_keeping_shared_keys(write_recipe, tmp_path):
    write_manifest(tmp_path, 20, patients=4)
    path = write_recipe("""
        _base_: tiny_base.yaml
        data: {source: manifest, path: reports.csv, text_column: report, image_root: images}
        objectives: {itc: {weight: 1.0}}
    """)
    data = load_recipe(path).spec.data
    assert data.source == "manifest" and data.image_size == 32 and data.max_text_len == 48
    assert not hasattr(data, "train_size")
    assert set(SHARED_ON_SOURCE_SWITCH) == set(_DataCommon.model_fields)


def test_paths_from_set_are_read_from_the_working_directory(write_recipe, tmp_path, monkeypatch):
    write_manifest(tmp_path / "d", 20, patients=4)
    path = write_recipe("""
        _base_: tiny_base.yaml
        data: {source: manifest, path: reports.csv, text_column: report}
        objectives: {itc: {weight: 1.0}}
    """)
    monkeypatch.chdir(tmp_path / "d")
    recipe = load_recipe(path, ["data.path=reports.csv", "data.image_root=images"])
    assert recipe.spec.data.path == str(tmp_path / "d" / "reports.csv")


def test_small_held_out_manifest_is_a_recipe_error(write_recipe, tmp_path):
    write_manifest(tmp_path, 40, patients=40)
    path = write_recipe("""
        _base_: tiny_base.yaml
        data: {source: manifest, path: reports.csv, text_column: report, image_root: images,
               val_fraction: 0.2, min_val_size: 20}
        objectives: {itc: {weight: 1.0}}
    """)
    with pytest.raises(RecipeError, match=r"data.val_fraction: the held-out set has 8 usable "
                                          r"pairs, fewer than max\(eval.ks\) \(10\)"):
        build_run(load_recipe(path), tmp_path / "run", "cpu")
    assert not (tmp_path / "run").exists()  # nothing written for a recipe that cannot run
    with pytest.raises(RecipeError, match=r"fewer than data.min_val_size \(20\)"):
        build_run(load_recipe(path, ["eval.ks=[1]"]), tmp_path / "run", "cpu")


def test_val_path_and_a_separate_test_manifest(write_recipe, tmp_path, capsys):
    write_manifest(tmp_path, 32, patients=8)
    write_manifest(tmp_path, 12, patients=3, name="val.csv", offset=100)
    write_manifest(tmp_path, 10, patients=2, name="test.csv", offset=200)
    path = write_recipe("""
        _base_: tiny_base.yaml
        data: {source: manifest, path: reports.csv, val_path: val.csv, text_column: report,
               image_root: images}
        objectives: {itc: {weight: 1.0}}
        trainer: {max_steps: 2}
    """)
    assert train_main([str(path), "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["retrieval"]["n"] == 12
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data", str(tmp_path / "test.csv")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 10
    assert json.loads((tmp_path / "run" / "retrieval_test.json").read_text()) == metrics
