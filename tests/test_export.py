"""Exports load in the reference library (timm, transformers, open_clip) and give vlp's outputs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vlp.cli import main
from vlp.core.model import VLPModel
from vlp.core.recipe import load_recipe
from vlp.core.run import load_run
from vlp.core.step import Step
from vlp.data.collate import Collator
from vlp.data.demo import DemoDataset, demo_reports
from vlp.data.tokenize import TokenIds, train_tokenizer

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

POOLS = {"token/cls": "", "avg/mean": ", pool: avg}, text_encoder: {pool: mean"}


def perturbed_model(write_recipe, pools: str, channels: int = 1):
    """A model from a tiny recipe with every weight randomised (norms and biases included)."""
    path = write_recipe(f"""
        _base_: tiny_base.yaml
        data: {{channels: {channels}}}
        model: {{image_encoder: {{depth: 2{pools}}}}}
        objectives: {{itc: {{weight: 1.0}}}}
    """ if pools else f"""
        _base_: tiny_base.yaml
        data: {{channels: {channels}}}
        model: {{image_encoder: {{depth: 2}}}}
        objectives: {{itc: {{weight: 1.0}}}}
    """)
    recipe = load_recipe(path)
    tokenizer = train_tokenizer(demo_reports(64), vocab_size=300)
    torch.manual_seed(0)
    model = VLPModel(recipe, TokenIds.of(tokenizer)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    data = DemoDataset(6, 32, 0, channels)
    batch = Collator(tokenizer, 48)([data[i] for i in range(6)])
    return model, tokenizer, batch


@pytest.mark.parametrize("pools", POOLS.values(), ids=POOLS.keys())
def test_timm_export_is_vlps_image_embedding(write_recipe, tmp_path, pools):
    from vlp.export.timm_format import export_timm

    model, _, batch = perturbed_model(write_recipe, pools)
    export_timm(model, tmp_path / "timm")
    loaded = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    with torch.no_grad():
        ours = Step(model, batch, torch.Generator()).image_embedding("image")
        theirs = F.normalize(loaded(batch.image), dim=-1)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    data_config = timm.data.resolve_data_config(model=loaded)
    assert tuple(data_config["mean"]) == (0.0,) and tuple(data_config["std"]) == (1.0,)
    assert tuple(data_config["input_size"]) == (1, 32, 32)


@pytest.mark.parametrize("pools", POOLS.values(), ids=POOLS.keys())
def test_hf_export_is_vlps_text_encoder(write_recipe, tmp_path, pools):
    from vlp.export.hf_format import export_hf

    model, tokenizer, batch = perturbed_model(write_recipe, pools)
    export_hf(model, tokenizer, tmp_path / "hf")
    hf = transformers.AutoModel.from_pretrained(str(tmp_path / "hf")).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    texts = demo_reports(6)
    encoded = hf_tok(texts, padding=True, truncation=True, return_tensors="pt")
    assert torch.equal(encoded["input_ids"], batch.input_ids)  # the same token ids
    with torch.no_grad():
        hidden = hf(**encoded).last_hidden_state
        ours = model.text_encoder(batch.input_ids, batch.attention_mask)
    real = batch.attention_mask
    torch.testing.assert_close(hidden[real], ours[real], rtol=1e-5, atol=1e-5)
    info = json.loads((tmp_path / "hf" / "vlp_export.json").read_text())
    weights = real.unsqueeze(-1).float()
    pooled = hidden[:, 0] if info["pool"] == "cls" else (hidden * weights).sum(1) / weights.sum(1)
    head = load_file(tmp_path / "hf" / "vlp_text_head.safetensors")["text_projection.weight"]
    with torch.no_grad():
        expected = Step(model, batch, torch.Generator()).text_embedding("text")
    torch.testing.assert_close(F.normalize(pooled @ head.T, dim=-1), expected, rtol=1e-5,
                               atol=1e-5)


@pytest.fixture
def trained_run(write_recipe, tmp_path):
    path = write_recipe("""
        _base_: tiny_base.yaml
        model: {image_encoder: {pool: avg}, text_encoder: {pool: mean}}
        objectives: {itc: {weight: 1.0}}
        trainer: {max_steps: 2}
    """)
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--no-eval"]) == 0
    return tmp_path / "run"


def _manifest(tmp_path, n=5):
    from PIL import Image

    rows = []
    for i, text in enumerate(demo_reports(n, offset=50)):
        Image.new("L", (32, 32), color=40 * i).save(tmp_path / f"e{i}.png")
        rows.append({"image": f"e{i}.png", "text": text, "id": f"study-{i}"})
    rows.append({"image": "missing.png", "text": "Clear.", "id": "study-x"})
    path = tmp_path / "embed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_embed_writes_the_runs_embeddings_with_ids(trained_run, tmp_path, capsys):
    from vlp.data.manifest import ManifestDataset

    manifest = _manifest(tmp_path)
    out = tmp_path / "emb.safetensors"
    assert main(["embed", str(trained_run), str(manifest), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "embeddings of 5 rows" in printed and '{"missing_image": 1}' in printed
    saved = load_file(out)
    run = load_run(trained_run, device="cpu")
    data = ManifestDataset(manifest, image_size=32)
    batch = run.collate([data[i] for i in range(len(data))])
    with torch.no_grad():
        step = Step(run.model.eval(), batch, torch.Generator())
        torch.testing.assert_close(saved["image"], step.image_embedding("image"))
        torch.testing.assert_close(saved["text"], step.text_embedding("text"))
    assert saved["id"].tolist() == list(range(1, 6))  # no id_column: the 1-based data rows

    parquet = tmp_path / "text.parquet"
    assert main(["embed", str(trained_run), str(manifest), str(parquet), "--what", "text"]) == 0
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(parquet).to_pydict()
    assert set(table) == {"id", "text"}
    torch.testing.assert_close(torch.tensor(table["text"]), saved["text"])


def test_export_cli_writes_a_loadable_timm_folder(trained_run, tmp_path):
    assert main(["export", str(trained_run), str(tmp_path / "t"), "--format", "timm"]) == 0
    assert timm.create_model(f"local-dir:{tmp_path / 't'}", pretrained=True).num_classes == 16
    assert main(["export", str(trained_run), str(tmp_path / "h"), "--format", "hf",
                 "--checkpoint", "step_0000002"]) == 0
    assert (tmp_path / "h" / "tokenizer.json").is_file()


@pytest.mark.parametrize("pools", POOLS.values(), ids=POOLS.keys())
def test_open_clip_export_gives_vlps_embeddings(write_recipe, tmp_path, pools):
    open_clip = pytest.importorskip("open_clip")
    from vlp.export.open_clip_format import REGISTER, export_open_clip, register

    model, tokenizer, batch = perturbed_model(write_recipe, pools)
    out = tmp_path / "oc"
    out.mkdir()
    export_open_clip(model, tokenizer, out)
    assert REGISTER in (out / "README.md").read_text()
    register()  # the one line the README asks for
    loaded = open_clip.create_model(f"local-dir:{out}").eval()
    oc_tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    with torch.no_grad():
        step = Step(model, batch, torch.Generator())
        image = loaded.encode_image(batch.image.repeat(1, 3, 1, 1), normalize=True)
        text = loaded.encode_text(oc_tokenizer(demo_reports(6)), normalize=True)
        torch.testing.assert_close(image, step.image_embedding("image"), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(text, step.text_embedding("text"), rtol=1e-5, atol=1e-5)
    learnt = model.objectives["itc"].temperature.log_scale
    assert loaded.logit_scale.item() == pytest.approx(learnt.item())
