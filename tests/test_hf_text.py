"""hf_text: a locally saved tiny BERT equals transformers' own forward, trains and resumes with
its own tokenizer and MLM head; broken folders and remote code are recipe errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from vlp.cli import train_main
from vlp.core.recipe import load_recipe
from vlp.core.trainer import train
from vlp.data.demo import demo_reports
from vlp.eval.evaluate import retrieval_of_run

transformers = pytest.importorskip("transformers")

RECIPE = """
_base_: tiny_base.yaml
model:
  text_encoder: {{_replace_: true, name: hf_text, path: {folder}}}
views: {{mlm: {{masker: mlm_tokens}}}}
objectives:
  itc: {{weight: 1.0}}
  mlm: {{weight: 1.0, text_view: mlm}}
trainer: {{max_steps: 4, ckpt_every: 2}}
"""


def save_tiny_bert(folder: Path, special: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                                             "[MASK]")) -> Path:
    """A 1-layer BERT with a masked-LM head and a WordPiece vocabulary of the demo reports."""
    words = sorted({w for text in demo_reports(200) for w in re.findall(r"\w+|[^\w\s]",
                                                                        text.lower())})
    vocab = [*special, *words, *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789")]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizerFast(str(folder / "vocab.txt"), pad_token=special[0],
                                         unk_token=special[1], cls_token=special[2],
                                         sep_token=special[3], mask_token=special[4])
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=64,
                                     pad_token_id=vocab.index(special[0]))
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "vocab.txt").unlink()  # the fast tokenizer.json alone must do
    return folder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("hf") / "tiny-bert")


def test_output_equals_transformers_forward(bert_dir):
    from vlp.encoders.hf_text import HFText

    params = HFText.Params(path=str(bert_dir))
    tokenizer, special = HFText.pretrained_tokenizer(params)
    enc = HFText(params, tokenizer.get_vocab_size(), 0, 64).eval()
    reference = transformers.AutoModel.from_pretrained(bert_dir, local_files_only=True).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(bert_dir, local_files_only=True)
    texts = ["Left pleural effusion.", "No acute cardiopulmonary process. Heart size normal."]
    batch = hf_tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = enc(batch["input_ids"], batch["attention_mask"].bool())
        theirs = reference(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], theirs[real])
    # the folder's tokenizer, as vlp's collator uses it, gives transformers' own ids
    from vlp.data.collate import Collator
    from vlp.data.sample import Pair

    pairs = [Pair(torch.zeros(1, 4, 4), t, i) for i, t in enumerate(texts)]
    collated = Collator(tokenizer, 48, special)(pairs)
    assert collated.input_ids.tolist() == batch["input_ids"].tolist()
    assert special.max_length == 64 and special.padding_side == "right"


def test_special_tokens_come_from_the_tokenizer(tmp_path):
    from vlp.data.tokenize import TokenIds
    from vlp.encoders.hf_text import HFText

    folder = save_tiny_bert(tmp_path / "odd", special=("<pad>", "<unk>", "<s>", "</s>", "<mask>"))
    tokenizer, special = HFText.pretrained_tokenizer(HFText.Params(path=str(folder)))
    ids = TokenIds.of(tokenizer, special)
    assert (ids.pad, ids.unk, ids.cls, ids.sep, ids.mask) == (0, 1, 2, 3, 4)
    assert tokenizer.encode("effusion").ids[0] == ids.cls


def test_recipe_trains_resumes_and_reuses_the_mlm_head(bert_dir, write_recipe, tmp_path):
    """hf_text plus image_encoder.weights (an RGB checkpoint, adapted to 1 channel)."""
    import timm
    from safetensors.torch import save_file

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32,
                            depth=1, num_heads=2, num_classes=0)
    weights = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    path = write_recipe(RECIPE.format(folder=bert_dir))
    recipe = load_recipe(path, [f"model.image_encoder.weights={weights}"])
    assert recipe.image_encoder.params.weights == str(weights)
    train(recipe, out=tmp_path / "straight")
    train(recipe, out=tmp_path / "split", stop_after=2)
    resumed = train(recipe, out=tmp_path / "split", resume="latest", evaluate=retrieval_of_run)

    def losses(run):
        return [{k: v for k, v in json.loads(ln).items() if k.startswith("loss")}
                for ln in (run / "metrics.jsonl").read_text().splitlines()]

    assert losses(tmp_path / "straight") == losses(tmp_path / "split")
    assert resumed.retrieval is not None and resumed.retrieval["n"] == 16
    saved = json.loads((tmp_path / "split" / "special_tokens.json").read_text())
    assert saved["pad"] == "[PAD]" and saved["max_length"] == 64
    # the MLM objective reuses the checkpoint's head (same weights at build time)
    from vlp.core.run import build_run

    run = build_run(recipe, tmp_path / "fresh", torch.device("cpu"))
    head = run.model.objectives["mlm"].head
    reference = transformers.BertForMaskedLM.from_pretrained(bert_dir, local_files_only=True)
    torch.testing.assert_close(head.predictions.transform.dense.weight,
                               reference.cls.predictions.transform.dense.weight)
    decoder = head.predictions.decoder.weight
    assert decoder is run.model.text_encoder.model.embeddings.word_embeddings.weight


def test_missing_or_broken_folder_is_a_recipe_error(bert_dir, write_recipe, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    remote = tmp_path / "remote"
    save_tiny_bert(remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (remote / "config.json").write_text(json.dumps(config))
    cases = {tmp_path / "nowhere": "not a folder", broken: "is not valid JSON",
             remote: "trust_remote_code: true"}
    for folder, reason in cases.items():
        path = write_recipe(RECIPE.format(folder=folder))
        assert train_main([str(path), "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert "model.text_encoder" in err and reason in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # rejected before anything was built
    corrupt = save_tiny_bert(tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"not safetensors")
    assert train_main([str(write_recipe(RECIPE.format(folder=corrupt))), "--out",
                       str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err
    assert "cannot load the model" in err and "Traceback" not in err


CUSTOM_CONFIG = """
from transformers import BertConfig


class CustomConfig(BertConfig):
    model_type = "vlp_test_custom_bert"
"""
CUSTOM_MODEL = """
from transformers import BertModel

from .configuration_custom import CustomConfig


class CustomModel(BertModel):
    config_class = CustomConfig
"""


def test_remote_code_runs_only_when_trusted(tmp_path):
    """A folder with its own modelling code (as CXR-BERT ships) loads with the opt-in."""
    from vlp.encoders.hf_text import HFText

    folder = save_tiny_bert(tmp_path / "custom")
    (folder / "configuration_custom.py").write_text(CUSTOM_CONFIG)
    (folder / "modeling_custom.py").write_text(CUSTOM_MODEL)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="vlp_test_custom_bert", architectures=["CustomModel"],
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                            "AutoModel": "modeling_custom.CustomModel"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        HFText.Params(path=str(folder))
    params = HFText.Params(path=str(folder), trust_remote_code=True)
    tokenizer, _ = HFText.pretrained_tokenizer(params)
    enc = HFText(params, tokenizer.get_vocab_size(), 0, 64)
    assert type(enc.model).__name__ == "CustomModel"
    assert enc.pretrained_mlm_head() is None  # no masked-LM class: MLM builds its own head
    ids = torch.tensor([tokenizer.encode("left effusion").ids])
    assert enc(ids, torch.ones_like(ids, dtype=torch.bool)).shape == (1, ids.shape[1], 32)
