"""The corpus of bad inputs: each case with the exact error `vlp recipe validate` must print.

Every case a user reports is added here: a recipe text (over the tiny base), the files it
needs, and the exact problem line (file:line: key: reason). Validation builds the model on the
meta device only, so no case allocates a model.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_recipe_errors import GOOD  # the tiny valid recipe every case starts from

from vlp.cli import main
from vlp.core.errors import RecipeError
from vlp.core.recipe import load_recipe

MIM = "  mim: {weight: 1, image_view: masked"
BIDIRECTIONAL = ("model: {fusion: {name: cross_attention, layers: 2, heads: 2, "
                 "bidirectional: true}}\n")

# (name, recipe text, exact problem line with {dir} for the test folder)
RECIPES = [
    ("image size not a multiple of the patch", GOOD + "data: {image_size: 36}\n",
     "recipe.yaml:6: data.image_size: cannot be built: 36 is not a multiple of the image "
     "encoder's patch size 8"),
    ("ViT width vs heads", GOOD + "model: {image_encoder: {num_heads: 3}}\n",
     "recipe.yaml:6: model.image_encoder: cannot be built: dim should be divisible by num_heads"),
    ("text encoder width vs heads", GOOD + "model: {text_encoder: {heads: 3}}\n",
     "recipe.yaml:6: model.text_encoder: Value error, width 32 is not divisible by heads 3"),
    ("MIM decoder width vs heads", GOOD + MIM + ", decoder_heads: 3}\n",
     "recipe.yaml:6: objectives.mim: cannot be built: width 128 is not divisible by heads 3"),
    ("fusion layer past the last", GOOD + MIM + ", source: fusion, fusion_layer: 2}\n"
     + BIDIRECTIONAL,
     "recipe.yaml:6: objectives.mim.fusion_layer: cannot be built: fusion_layer 2: the fusion "
     "exposes 2 image layers (only a bidirectional fusion updates the image stream per layer)"),
    ("timm arch not a ViT", GOOD + "model: {image_encoder: {arch: resnet18}}\n",
     "recipe.yaml:6: model.image_encoder.arch: cannot be built: resnet18 is not a timm Vision "
     "Transformer (ResNet.__init__() got an unexpected keyword argument 'img_size')"),
    ("learning rate NaN", GOOD + "optim: {lr: .nan}\n",
     "recipe.yaml:6: optim.lr: Input should be a finite number (got nan)"),
    ("learning rate infinite", GOOD + "optim: {lr: .inf}\n",
     "recipe.yaml:6: optim.lr: Input should be a finite number (got inf)"),
    ("learning rate absurd", GOOD + "optim: {lr: 5}\n",
     "recipe.yaml:6: optim.lr: Input should be less than or equal to 1 (got 5)"),
    ("beta of 1.5", GOOD + "optim: {betas: [0.9, 1.5]}\n",
     "recipe.yaml:6: optim.betas.1: Input should be less than 1 (got 1.5)"),
    ("eps of 0", GOOD + "optim: {eps: 0}\n",
     "recipe.yaml:6: optim.eps: Input should be greater than 0 (got 0)"),
    ("objective weight infinite", GOOD.replace("weight: 1.0", "weight: .inf"),
     "recipe.yaml:5: objectives.itc.weight: Input should be a finite number (got inf)"),
    ("plugin param NaN", GOOD.replace("weight: 1.0", "weight: 1.0, init_temperature: .nan"),
     "recipe.yaml:5: objectives.itc.init_temperature: Input should be a finite number (got nan)"),
    ("drop-path rate of 1.5", GOOD + "model: {image_encoder: {drop_path_rate: 1.5}}\n",
     "recipe.yaml:6: model.image_encoder.drop_path_rate: Input should be less than 1 (got 1.5)"),
    ("empty eval.ks", GOOD + "eval: {ks: []}\n",
     "recipe.yaml:6: eval.ks: Tuple should have at least 1 item after validation, not 0"),
    ("device gpu", GOOD + "trainer: {device: gpu}\n",
     "recipe.yaml:6: trainer.device: unknown device 'gpu'; expected auto, cpu, cuda or cuda:N"),
    ("tokenizer file missing", GOOD + "model: {tokenizer: {path: no/tok.json}}\n",
     "recipe.yaml:6: model.tokenizer.path: file not found: {dir}/no/tok.json"),
    ("_base_ not a path", GOOD.replace("_base_: tiny_base.yaml", "_base_: [1]"),
     "recipe.yaml:1: _base_: expected a file path"),
    ("_base_ missing", GOOD.replace("tiny_base.yaml", "tiny_bse.yaml"),
     "recipe.yaml:1: _base_: base recipe not found: tiny_bse.yaml (looked for "
     "{dir}/tiny_bse.yaml)"),
    ("misspelled required key", GOOD.replace("weight: 1.0", "weigth: 1.0"),
     "recipe.yaml:5: objectives.itc.weigth: unknown key `objectives.itc.weigth`, did you mean "
     "`weight`? (`weight` is required)"),
    ("data without source", GOOD + "data: {_replace_: true, path: x.csv}\n",
     "recipe.yaml:6: data.source: required key is missing; expected one of: 'demo', 'manifest', "
     "'webdataset'"),
    ("recursive alias", GOOD + "eval: &e {ks: *e}\n",
     "recipe.yaml:6: eval.ks: recursive alias: this value contains itself"),
    ("alias bomb", GOOD + "x0: &x0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 10)}]\n" for i in range(1, 6)),
     "recipe.yaml:11: x5: aliases expand to more than 200000 values"),
    ("weights file missing", GOOD + "model: {image_encoder: {weights: none.safetensors}}\n",
     "recipe.yaml:6: model.image_encoder: Value error, weights file not found: "
     "{dir}/none.safetensors"),
]


def run_validate(path, capsys) -> str:
    assert main(["recipe", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("name,text,line", RECIPES, ids=[c[0] for c in RECIPES])
def test_bad_recipe_gives_its_exact_error(name, text, line, write_recipe, capsys):
    path = write_recipe(text)
    err = run_validate(path, capsys)
    assert f"  {path.parent}/{line.format(dir=path.parent)}\n" in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(write_recipe, capsys):
    path = write_recipe(GOOD + "trainer: {device: cuda}\n")
    assert (f"{path}:6: trainer.device: 'cuda': CUDA is not available on this machine; use auto "
            "or cpu") in run_validate(path, capsys)


def test_model_too_large_for_memory_gives_the_estimate(write_recipe, capsys):
    path = write_recipe(GOOD + "model: {text_encoder: {width: 65536, heads: 16, layers: 64}}\n")
    err = run_validate(path, capsys)
    assert re.search(rf"{path}:6: model.text_encoder: the model would not fit in memory: "
                     r"3298\.61 G parameters \(3298\.61 G here\) need about 52777\.8 GB for "
                     r"weights, gradients and AdamW state; this machine's host memory is "
                     r"[\d.]+ GB", err), err


def test_pretrained_weights_that_do_not_fit_are_one_line(write_recipe, tmp_path, capsys):
    import timm

    other = timm.create_model("vit_tiny_patch16_224", num_classes=0, depth=1, embed_dim=64,
                              num_heads=2, img_size=32, patch_size=8)
    weights = tmp_path / "other.safetensors"
    save_file(other.state_dict(), str(weights))
    path = write_recipe(GOOD + f"model: {{image_encoder: {{weights: {weights}}}}}\n")
    err = run_validate(path, capsys)
    problem = err.splitlines()[1]
    assert len(err.splitlines()) == 2, err
    assert problem.startswith(
        f"  {path}:6: model.image_encoder.weights: cannot be built: {weights} does not fit this "
        "model: Error(s) in loading state_dict for VisionTransformer: size mismatch for "
        "cls_token: copying a param with shape torch.Size([1, 1, 64]) from checkpoint, the "
        "shape in current model is torch.Size([1, 1, 32]). (and "), problem


def test_all_problems_of_a_file_at_once(write_recipe):
    """A core-spec error (trainer.max_step) does not hide a plugin param typo further down."""
    text = GOOD + "  mlm: {weight: 1, text_veiw: mlm}\ntrainer: {max_step: 3}\n"
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(text))
    assert {str(p).split(": ", 1)[1] for p in info.value.problems} >= {
        "trainer.max_step: unknown key (expected one of: batch_size, best_metric, budget_flops, "
        "budget_samples, ckpt_every, compile, device, diagnostics_every, eval_every, "
        "find_unused_parameters, grad_accum, grad_checkpointing, grad_clip, keep_checkpoints, "
        "log_every, max_steps, parallel, precision, tensorboard, threads); did you mean "
        "`max_steps`?",
        "objectives.mlm.text_veiw: unknown key `objectives.mlm.text_veiw`, did you mean "
        "`text_view`? (`text_view` is required)",
    }


def test_recipe_not_utf8_names_the_line(write_recipe, capsys):
    path = write_recipe(GOOD)
    path.write_bytes(GOOD.encode().replace(b"ratio: 0.5}", b"ratio: 0.5} # \xe9t\xe9"))
    assert f"  {path}:3: <root>: not UTF-8 text: byte 0xe9 at column 50 (save the file as " \
           "UTF-8)" in run_validate(path, capsys)


def test_base_with_a_bad_byte_names_the_base(write_recipe, tmp_path, capsys):
    path = write_recipe(GOOD)
    base = tmp_path / "tiny_base.yaml"
    base.write_bytes(base.read_bytes() + b"# caf\xff\n")
    lines = base.read_bytes().count(b"\n")
    assert f"  {base}:{lines}: <root>: not UTF-8 text: byte 0xff" in run_validate(path, capsys)


def test_base_with_a_recursive_alias_names_the_base(write_recipe, tmp_path, capsys):
    path = write_recipe(GOOD)
    base = tmp_path / "tiny_base.yaml"
    base.write_text(base.read_text() + "views: &v {loop: *v}\n")
    assert f"{base}:" in (err := run_validate(path, capsys)) and "recursive alias" in err


@pytest.fixture
def manifest(tmp_path):
    for i in range(3):
        Image.new("L", (8, 8), i * 40).save(tmp_path / f"{i}.png")
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"image": f"{i}.png", "text": f"report {i}"}) + "\n"
                            for i in range(3)))
    return path


def test_manifest_column_that_does_not_exist(write_recipe, manifest, capsys):
    path = write_recipe(GOOD + f"data: {{_replace_: true, source: manifest, path: {manifest}, "
                               "text_column: report}\n")
    assert (f"{path}:6: data.text_column: {manifest} has no column 'report' (columns found: "
            "'image', 'text')") in run_validate(path, capsys)


def test_manifest_without_rows(write_recipe, tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("image,text\n")
    path = write_recipe(GOOD + f"data: {{_replace_: true, source: manifest, path: {empty}}}\n")
    assert f"{path}:6: data.path: {empty} holds no data rows" in run_validate(path, capsys)


def test_manifest_row_with_a_bad_byte_is_skipped_alone(tmp_path):
    from vlp.data.manifest import ManifestDataset

    for i in range(3):
        Image.new("L", (8, 8), i * 40).save(tmp_path / f"{i}.png")
    csv = tmp_path / "m.csv"
    csv.write_bytes(b"image,text\n0.png,Clear.\n1.png,Opacit\xe9 left.\n2.png,Normal.\n")
    ds = ManifestDataset(csv, image_size=8)
    assert len(ds) == 2 and ds.num_rows == 3 and ds.texts == ["Clear.", "Normal."]
    assert ds.bad_rows == [(2, "malformed_row")]
    assert ds.bad_row_details == [f"{csv}: data row 2 (1-based, header excluded; line 3): "
                                  "malformed_row: not UTF-8: byte 0xe9 at field 2, character 7"]
