"""webdataset shards: `vlp data shard`, the rank/worker split, exact resume, and training on
2 gloo ranks from a sharded copy of the demo data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlp.cli import main
from vlp.data.collate import Collator
from vlp.data.demo import DemoDataset, demo_reports
from vlp.data.tokenize import train_tokenizer

pytest.importorskip("webdataset")


def demo_copy(folder: Path, n: int, offset: int = 0) -> Path:
    """The demo data set written out as PNG files and a manifest (plus one missing image)."""
    data = DemoDataset(n, image_size=32, offset=offset)
    rows = []
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pair = data[i]
        pixels = (pair.image[0].numpy() * 65535).round().astype(np.uint16)
        Image.fromarray(pixels).save(folder / "img" / f"{offset + i}.png")
        rows.append({"image": f"img/{offset + i}.png", "text": pair.text, "id": offset + i})
    rows.append({"image": "img/absent.png", "text": "Clear lungs.", "id": -1})
    manifest = folder / f"manifest-{offset}.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wds")
    assert main(["data", "shard", str(demo_copy(root, 64)), str(root / "train"),
                 "--shard-size", "8", "--id-column", "id"]) == 0
    assert main(["data", "shard", str(demo_copy(root, 16, offset=64)), str(root / "val"),
                 "--shard-size", "8", "--id-column", "id"]) == 0
    return root


def test_shard_index_counts_samples_and_bad_rows(shards):
    index = json.loads((shards / "train" / "index.json").read_text())
    assert index["total"] == 64 and [s["samples"] for s in index["shards"]] == [8] * 8
    assert index["skipped"] == {"missing_image": 1}
    from vlp.data.shards import expand, samples, to_pair

    urls = expand(str(shards / "train" / "shard-{000000..000007}.tar"))
    ids = sorted(int(json.loads(s["json"])["id"]) for u in urls for s in samples(u))
    assert ids == list(range(64))
    import shutil

    from vlp.data.shards import read_index

    bare = shards / "bare"  # shards copied without their index.json: counted by reading
    bare.mkdir(exist_ok=True)
    for url in urls[:2]:
        shutil.copy(url, bare)
    counted, skipped = read_index(sorted(str(p) for p in bare.glob("*.tar")))
    assert [s.samples for s in counted] == [8, 8] and skipped == {}
    first = next(samples(urls[0]))  # the image file's own 16-bit bytes, decoded alike
    pair = to_pair(first, 1, 32)
    original = DemoDataset(64, image_size=32)[pair.sample_id]
    assert pair.text == original.text
    np.testing.assert_allclose(pair.image.numpy(), original.image.numpy(), atol=1e-4)


def stream_ids(shards: Path, start: int, total: int, rank: int, world: int, workers: int
               ) -> list[list[int]]:
    from vlp.data.shards import ShardStream, expand, read_index

    tok = train_tokenizer(["clear lungs no effusion"] * 4, vocab_size=100)
    listed, _ = read_index(expand(str(shards / "train" / "shard-{000000..000007}.tar")))
    stream = ShardStream(listed, 32, 1)
    loader = stream.loader(Collator(tok, 16), 8, 0, start, total, workers, rank, world, False)
    return [b.sample_id.tolist() for b, _faults in loader]


def test_ranks_and_workers_split_shards_and_resume_exactly(shards):
    straight = stream_ids(shards, 0, 12, rank=0, world=2, workers=2)
    assert len(straight) == 12 and all(len(b) == 4 for b in straight)
    resumed = stream_ids(shards, 5, 12, rank=0, world=2, workers=2)
    assert resumed == straight[5:]  # exactly where the interrupted run was
    other = stream_ids(shards, 0, 8, rank=1, world=2, workers=2)
    epoch0 = [i for b in straight[:8] for i in b]
    epoch1 = [i for b in other for i in b]
    assert not set(epoch0) & set(epoch1)  # each rank reads its own shards
    assert sorted(epoch0 + epoch1) == list(range(64))  # one epoch covers every sample once
    assert stream_ids(shards, 3, 6, rank=0, world=1, workers=0) == \
        stream_ids(shards, 0, 6, rank=0, world=1, workers=0)[3:]


def test_starting_the_shard_loader_draws_nothing_from_the_global_rng(shards):
    """Dropout draws from the global torch RNG; a loader that seeds its workers from it would
    shift dropout after a resume (the state is restored before the loader starts)."""
    import torch

    from vlp.data.loader import DataSplits, train_loader
    from vlp.data.shards import ShardStream, expand, read_index

    tok = train_tokenizer(["clear lungs no effusion"] * 4, vocab_size=100)
    listed, _ = read_index(expand(str(shards / "train" / "shard-{000000..000007}.tar")))
    data = DataSplits(ShardStream(listed, 32, 1), [], [], {})
    torch.manual_seed(0)
    before = torch.get_rng_state()
    loader = train_loader(data, Collator(tok, 16), 8, 0, 2, 4, 0, 0, 1, False)
    next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)


def test_two_gloo_ranks_train_and_resume_from_shards(shards, write_recipe, tmp_path):
    path = write_recipe(f"""
        _base_: tiny_base.yaml
        data: {{_replace_: true, source: webdataset, image_size: 32, max_text_len: 48,
                urls: "{shards}/train/shard-{{000000..000007}}.tar",
                val_urls: "{shards}/val/shard-{{000000..000001}}.tar"}}
        objectives: {{itc: {{weight: 1.0}}}}
        trainer: {{max_steps: 4, batch_size: 8}}
    """)
    tok = tmp_path / "tok.json"  # one vocabulary for all runs
    train_tokenizer(demo_reports(80), vocab_size=300).save(str(tok))
    path.write_text(path.read_text() + f"model: {{tokenizer: {{path: {tok}}}}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", "29541", str(Path(__file__).parent / "shard_worker.py"), str(path),
         str(tmp_path)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]

    def losses(run: Path) -> list[dict[str, float]]:
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k.startswith("loss") or k == "step"}
                for r in rows]

    assert losses(tmp_path / "split") == losses(tmp_path / "straight")
    assert [r["step"] for r in losses(tmp_path / "split")] == [1, 2, 3, 4]
    summary = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert summary["retrieval"]["n"] == 16 and summary["skipped_rows"] == {"missing_image": 1}


def test_missing_shards_are_a_recipe_error(shards, write_recipe):
    from vlp.core.errors import RecipeError
    from vlp.core.recipe import load_recipe

    path = write_recipe(f"""
        _base_: tiny_base.yaml
        data: {{_replace_: true, source: webdataset, image_size: 32,
                urls: "{shards}/train/shard-{{000000..000009}}.tar",
                val_urls: "{shards}/nowhere/shard-000000.tar"}}
        objectives: {{itc: {{weight: 1.0}}}}
    """)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    text = str(info.value)
    assert "data.urls: shard not found:" in text and "(2 missing)" in text
    assert "data.val_urls: shard not found:" in text
