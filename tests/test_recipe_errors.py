"""Malformed recipes are rejected before any model is built, naming file, key and reason."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import vlp.core.model
from vlp.cli import train_main
from vlp.core.errors import RecipeError
from vlp.core.recipe import load_recipe

GOOD = """\
_base_: tiny_base.yaml
views:
  masked: {masker: random_patches, ratio: 0.5}
objectives:
  itc: {weight: 1.0}
"""

# (name, recipe text, extra --set args, dotted key expected, reason fragment, line or None)
CASES = [
    ("unknown plugin", GOOD.replace("itc: {weight: 1.0}", "itcc: {weight: 1.0}"), [],
     "objectives.itcc", "unknown objective 'itcc'", 5),
    ("misspelled key", GOOD.replace("{weight: 1.0}", "{weight: 1.0, temprature: 0.1}"), [],
     "objectives.itc.temprature", "unknown key (expected one of: ", 5),
    ("wrong type", GOOD + "trainer: {max_steps: many}\n", [],
     "trainer.max_steps", "valid integer", 6),
    ("negative weight", GOOD.replace("weight: 1.0", "weight: -1"), [],
     "objectives.itc.weight", "greater than or equal to 0", 5),
    ("undefined view", GOOD.replace("{weight: 1.0}", "{weight: 1.0, image_view: masekd}"), [],
     "objectives.itc.image_view", "undefined image view 'masekd'", 5),
    ("view of wrong modality", GOOD.replace("{weight: 1.0}", "{weight: 1.0, text_view: masked}"),
     [], "objectives.itc.text_view", "view 'masked' has no text part", 5),
    ("missing data path",
     GOOD + "data: {_replace_: true, source: manifest, path: no/such.csv}\n", [],
     "data.path", "no/such.csv", 6),
    ("duplicate key", GOOD + "seed: 1\nseed: 2\n", [], "seed", "duplicate key", 7),
    ("unknown top-level key", GOOD + "optimiser: {lr: 0.1}\n", [],
     "optimiser", "unknown key", 6),
    ("unknown masker", GOOD.replace("masker: random_patches", "masker: random_patchez"), [],
     "views.masked.masker", "unknown masker 'random_patchez'", 3),
    ("masker ratio out of range", GOOD.replace("ratio: 0.5", "ratio: 1.5"), [],
     "views.masked.ratio", "less than 1", 3),
    ("remote weights", GOOD + "model: {image_encoder: {pretrained: true}}\n", [],
     "model.image_encoder", "nothing is downloaded", None),
    ("unknown timm arch", GOOD + "model: {image_encoder: {arch: vit_nonexistent}}\n", [],
     "model.image_encoder.arch", "timm has no model 'vit_nonexistent'", None),
    ("unknown data source", GOOD + "data: {source: dicom}\n", [],
     "data", "unknown value 'dicom'", None),
    ("override of unknown key", GOOD, ["trainer.max_stepz=3"],
     "trainer.max_stepz", "unknown key", None),
    ("invalid YAML", GOOD + "trainer: {max_steps: [1, 2\n", [], "", "not valid YAML", None),
    ("accumulation with negatives", GOOD + "trainer: {grad_accum: 2}\n", [],
     "trainer.grad_accum", "objective 'itc' compares samples within the batch", None),
    ("nothing to train", GOOD.replace("weight: 1.0", "weight: 0"), [],
     "objectives", "no objective has a weight above 0", None),
    ("MLM on an unmasked view", GOOD + "  mlm: {weight: 1, text_view: text}\n", [],
     "objectives.mlm.text_view", "needs a masked text view; 'text' is built-in, unmasked", 6),
    ("MIM on an augmented view",
     GOOD.replace("views:\n", "views:\n  aug: {masker: augment}\n")
     + "  mim: {weight: 1, image_view: aug}\n",
     [], "objectives.mim.image_view", "'aug' is made by 'augment', which masks no image", 7),
    ("held-out set smaller than k", GOOD + "eval: {ks: [1, 20]}\n", [],
     "data.val_size", "16 is smaller than max(eval.ks) (20)", None),
    ("batch larger than the data", GOOD + "trainer: {batch_size: 128}\n", [],
     "data.train_size", "64 is smaller than trainer.batch_size (128)", None),
    ("augment gamma of 0", GOOD.replace("random_patches, ratio: 0.5", "augment, gamma: [0, 1]"),
     [], "views.masked.gamma.0", "greater than 0", 3),
]


@pytest.fixture
def no_model_built(monkeypatch):
    """Only the recipe check's meta-device build (which allocates nothing) may run."""
    real = vlp.core.model.VLPModel.__init__

    def refuse(self, *args, **kwargs):
        if torch.get_default_device().type != "meta":
            raise AssertionError("a model was built for an invalid recipe")
        real(self, *args, **kwargs)
    monkeypatch.setattr(vlp.core.model.VLPModel, "__init__", refuse)


def test_good_recipe_is_valid(write_recipe):
    assert list(load_recipe(write_recipe(GOOD)).objectives) == ["itc"]


@pytest.mark.parametrize("name,text,sets,key,reason,line", CASES, ids=[c[0] for c in CASES])
def test_malformed_recipe_rejected(name, text, sets, key, reason, line, write_recipe, capsys,
                                   no_model_built):
    path = write_recipe(text)
    argv = [str(path), *[a for s in sets for a in ("--set", s)]]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    source = f"--set {sets[0]}" if sets else str(path)
    assert source in err
    if line is not None:
        assert f"{path}:{line}: " in err
    assert f": {key}: " in err if key else True
    assert reason in err


@pytest.mark.parametrize("extra,key,reason", [
    ("  itm: {weight: 1}\nmodel: {fusion: {name: cross_attention, heads: 3}}\n",
     "model.fusion", "cannot be built: fusion width 32 must be divisible by heads 3"),
    ("data: {image_size: 36}\n", "data.image_size",
     "cannot be built: 36 is not a multiple of the image encoder's patch size 8"),
])
def test_parts_that_do_not_fit_fail_cleanly_before_training(extra, key, reason, write_recipe,
                                                           capsys, tmp_path):
    assert train_main([str(write_recipe(GOOD + extra)), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f": {key}: {reason}" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_all_problems_reported_at_once(write_recipe):
    text = (GOOD.replace("{weight: 1.0}", "{weight: 1.0, temprature: 1}")
            + "trainer: {max_steps: -3}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(text))
    keys = {p.key for p in err.value.problems}
    assert "trainer.max_steps" in keys


def test_scientific_notation_is_a_number(write_recipe):
    recipe = load_recipe(write_recipe(GOOD + "optim: {lr: 1e-4}\n"))
    assert recipe.spec.optim.lr == pytest.approx(1e-4)


def test_override_and_base(write_recipe):
    recipe = load_recipe(write_recipe(GOOD), ["objectives.itc.weight=0.5",
                                              "trainer.max_steps=7"])
    assert recipe.objectives["itc"].weight == 0.5
    assert recipe.spec.trainer.max_steps == 7
    assert recipe.spec.data.image_size == 32  # from the base


def test_print_config_round_trips(write_recipe, capsys, tmp_path):
    path = write_recipe(GOOD)
    assert train_main([str(path), "--print-config"]) == 0
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(capsys.readouterr().out)
    again = load_recipe(resolved)
    assert again.to_dict() == load_recipe(path).to_dict()
    assert again.objectives["itc"].params.init_temperature == 0.07  # defaults filled in


def test_cli_prints_no_traceback(write_recipe):
    path = write_recipe(GOOD.replace("itc:", "itcc:"))
    proc = subprocess.run([sys.executable, "-m", "vlp.cli", "recipe", "validate", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "objectives.itcc" in proc.stderr
