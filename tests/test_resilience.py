"""Faults that must not cost a run: signals, kill -9, a full disk, a mistaken command line,
images that fail to decode when drawn; with dropout and drop-path on, resume stays exact."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import vlp.core.checkpoint as checkpoint_module
import vlp.core.trainer as trainer_module
from vlp.cli import train_main
from vlp.core.recipe import load_recipe
from vlp.core.trainer import train
from vlp.data.demo import demo_reports
from vlp.data.tokenize import train_tokenizer
from vlp.eval.evaluate import retrieval_of_run

TESTS = Path(__file__).parent


def losses(run: Path) -> list[dict[str, float]]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("loss") or k == "step"} for r in rows]


@pytest.fixture
def stochastic(write_recipe, tmp_path):
    """A recipe with dropout 0.1 in the text encoder and fusion and drop-path 0.1 in the ViT."""
    tok = tmp_path / "tokenizer.json"
    train_tokenizer(demo_reports(64), vocab_size=300).save(str(tok))
    return write_recipe(f"""
        _base_: tiny_base.yaml
        model:
          image_encoder: {{depth: 2, drop_path_rate: 0.1}}
          text_encoder: {{dropout: 0.1}}
          fusion: {{name: cross_attention, layers: 1, heads: 2, dropout: 0.1}}
          tokenizer: {{path: {tok}}}
        views:
          mlm: {{masker: mlm_tokens}}
        objectives:
          itc: {{weight: 1.0}}
          mlm: {{weight: 1.0, text_view: mlm, fused: true}}
        trainer: {{max_steps: 6, log_every: 1, ckpt_every: 2}}
    """)


def test_resume_is_exact_with_dropout_and_drop_path(stochastic, tmp_path):
    recipe = load_recipe(stochastic)
    train(recipe, out=tmp_path / "straight", evaluate=None)
    train(recipe, out=tmp_path / "split", evaluate=None, stop_after=3)
    train(recipe, out=tmp_path / "split", resume="latest", evaluate=None)
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")
    assert len(losses(tmp_path / "straight")) == 6


def torchrun(*args: str, wait: bool = True):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--standalone", str(TESTS / "resume_worker.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_sigterm_to_torchrun_stops_both_ranks_at_one_step_and_resumes_exactly(stochastic,
                                                                               tmp_path):
    """Two gloo ranks, each drawing its own share and its own dropout: SIGTERM mid-run, then
    resume, gives the losses of the uninterrupted two-rank run."""
    proc = torchrun("slow", str(stochastic), str(tmp_path), wait=False)
    _wait_for(lambda: _steps_logged(tmp_path / "run") >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "SIGTERM: stopped after step " in err, err[-3000:]
    stopped = int((tmp_path / "run" / "checkpoints" / "latest").read_text()[5:])
    assert 2 <= stopped < 6
    ranks = torch.load(tmp_path / "run" / "checkpoints" / f"step_{stopped:07d}" / "state.pt",
                       weights_only=True)["ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["rng"]["cpu"], ranks[1]["rng"]["cpu"])
    torchrun("resume", str(stochastic), str(tmp_path))
    assert losses(tmp_path / "run") == losses(tmp_path / "straight")
    assert len(losses(tmp_path / "straight")) == 6


def test_ctrl_c_ends_the_step_with_a_checkpoint(stochastic, tmp_path, monkeypatch, capsys):
    real = trainer_module.step_generator

    def interrupt_at_step_3(device, seed, step, micro_batch=0):
        if step == 2:  # 0-based: Ctrl-C arrives during the third step
            os.kill(os.getpid(), signal.SIGINT)
        return real(device, seed, step, micro_batch)

    monkeypatch.setattr(trainer_module, "step_generator", interrupt_at_step_3)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a job started in the background
    assert train_main([str(stochastic), "--out", str(out), "--no-eval"]) == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert err == (f"SIGINT: stopped after step 3 with a checkpoint in {out / 'checkpoints'}; "
                   "continue with --resume latest\n")
    assert (out / "checkpoints" / "latest").read_text() == "step_0000003"
    assert signal.getsignal(signal.SIGINT) is before  # the handler is restored
    monkeypatch.setattr(trainer_module, "step_generator", real)
    train(load_recipe(stochastic), out=out, resume="latest", evaluate=None)
    train(load_recipe(stochastic), out=tmp_path / "straight", evaluate=None)
    assert losses(out) == losses(tmp_path / "straight")


SLOW_TRAIN = """\
import sys, time
import vlp.core.trainer as t
real = t.step_generator
def slow(*args):
    time.sleep(0.3)  # time for the test to signal mid-run; the numbers are unchanged
    return real(*args)
t.step_generator = slow
from vlp.cli import train_main
sys.exit(train_main(sys.argv[1:]))
"""


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "kill -9"])
def test_killed_run_resumes_exactly(sig, stochastic, tmp_path):
    """SIGTERM mid-run (a scheduler's time limit) or kill -9 after a checkpoint, then
    `--resume latest`: the losses of the uninterrupted run, step for step."""
    out = tmp_path / "run"
    recipe = ["--set", "trainer.max_steps=10"]
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_TRAIN, str(stochastic), "--out", str(out), "--no-eval",
         *recipe], stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    if sig == signal.SIGKILL:  # after the checkpoint of step 4 and the log line of step 5
        _wait_for(lambda: _steps_logged(out) >= 5, proc)
    else:
        _wait_for(lambda: _steps_logged(out) >= 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + sig)
    if sig == signal.SIGTERM:
        assert len(err.splitlines()) == 1 and err.startswith("SIGTERM: stopped after step ")
        assert "Traceback" not in err
    assert train_main([str(stochastic), "--out", str(out), "--resume", "latest", "--no-eval",
                       *recipe]) == 0
    train(load_recipe(stochastic, ["trainer.max_steps=10"]), out=tmp_path / "straight",
          evaluate=None)
    assert losses(out) == losses(tmp_path / "straight")
    assert [r["step"] for r in losses(out)] == list(range(1, 11))


@pytest.fixture
def tiny(write_recipe):
    return write_recipe("""
        _base_: tiny_base.yaml
        objectives: {itc: {weight: 1.0}}
        trainer: {max_steps: 4, ckpt_every: 2}
    """)


def test_out_naming_an_existing_run_is_refused(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main([str(tiny), "--out", str(out), "--no-eval"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert train_main([str(tiny), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {out} already holds a run; continue it with --resume latest, or "
                   "pass another --out\n")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_resuming_a_finished_run_changes_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main([str(tiny), "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert json.loads((out / "summary.json").read_text())["final"]["step"] == 4
    capsys.readouterr()
    assert train_main([str(tiny), "--out", str(out), "--resume", "latest"]) == 0
    assert capsys.readouterr().err == (f"{out} already finished at step 4 (trainer.max_steps 4);"
                                       " nothing to resume, nothing changed\n")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_resume_applies_operational_changes_and_refuses_the_rest(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main([str(tiny), "--out", str(out), "--no-eval", "--stop-after", "2"]) == 0
    resume = [str(tiny), "--out", str(out), "--resume", "latest", "--no-eval"]
    capsys.readouterr()
    assert train_main([*resume, "--set", "optim.lr=0.01", "--set", "trainer.log_every=2"]) == 2
    assert capsys.readouterr().err == (
        f"error: --resume: the recipe differs from the run's {out / 'recipe.yaml'} (optim.lr: "
        "0.001 in the run, 0.01 now); a resumed run continues its own recipe: resume without "
        "these changes, or start a new run with another --out\n")
    assert not (out / "recipe_changes.jsonl").exists()
    assert train_main([*resume, "--set", "trainer.log_every=2"]) == 0
    assert yaml.safe_load((out / "recipe.yaml").read_text())["trainer"]["log_every"] == 2
    assert [json.loads(ln) for ln in (out / "recipe_changes.jsonl").read_text().splitlines()] \
        == [{"step": 2, "changes": {"trainer.log_every": [1, 2]}}]
    assert [r["step"] for r in losses(out)] == [1, 2, 4]


def test_full_disk_keeps_the_previous_checkpoint(tiny, tmp_path, monkeypatch, capsys):
    real, calls = checkpoint_module.save_model, []

    def disk_fills_up(model, path):
        calls.append(path)
        if len(calls) == 2:  # the checkpoint of step 4
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real(model, path)

    monkeypatch.setattr(checkpoint_module, "save_model", disk_fills_up)
    out = tmp_path / "run"
    assert train_main([str(tiny), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: could not write the checkpoint of step 4 in {out / 'checkpoints'}: "
                   "No space left on device; the previous checkpoint step_0000002 is intact\n")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_0000002"]
    monkeypatch.setattr(checkpoint_module, "save_model", real)
    assert train(load_recipe(tiny), out=out, resume="latest", evaluate=None).steps == 4


def _truncated_jpeg(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 32), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # verify() passes


@pytest.fixture
def truncated_data(write_recipe, tmp_path):
    """32 training rows (4 steps of 8 draw each once), row 11 a JPEG cut in half; 16 held-out
    rows, row 4 that JPEG too."""
    images = tmp_path / "img"
    images.mkdir()
    reports = demo_reports(48)
    for i in range(48):
        Image.new("L", (32, 32), color=i * 5).save(images / f"{i}.png")
    _truncated_jpeg(images / "cut.jpg", 0)
    train_rows = [{"file": f"{i}.png", "report": reports[i]} for i in range(32)]
    train_rows[10] = {"file": "cut.jpg", "report": reports[10]}
    val_rows = [{"file": f"{i}.png", "report": reports[i]} for i in range(32, 48)]
    val_rows[3] = {"file": "cut.jpg", "report": reports[35]}
    for name, rows in (("train", train_rows), ("val", val_rows)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = tmp_path / "tokenizer.json"  # one vocabulary for every run
    train_tokenizer(reports, vocab_size=300).save(str(tok))
    return write_recipe(f"""
        _base_: tiny_base.yaml
        model: {{tokenizer: {{path: {tok}}}}}
        data: {{_replace_: true, source: manifest, path: {tmp_path / 'train.jsonl'},
                val_path: {tmp_path / 'val.jsonl'}, image_root: {images}, image_column: file,
                text_column: report, image_size: 32}}
        objectives: {{itc: {{weight: 1.0}}}}
        trainer: {{max_steps: 4, log_every: 1, ckpt_every: 2}}
    """)


def test_image_unreadable_when_drawn_is_replaced_counted_and_resumes_exactly(truncated_data,
                                                                             tmp_path):
    recipe = load_recipe(truncated_data)
    straight = train(recipe, out=tmp_path / "straight", evaluate=retrieval_of_run)
    train(recipe, out=tmp_path / "split", stop_after=2)
    train(recipe, out=tmp_path / "split", resume="latest", evaluate=retrieval_of_run)
    assert straight.steps == 4 and losses(tmp_path / "split") == losses(tmp_path / "straight")
    for run in ("straight", "split"):
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        assert summary["rows"] == {"read": 48, "trained_on": 31, "held_out": 16, "skipped": 1}
        assert summary["skipped_rows"] == {"unreadable_image": 1}
        assert summary["bad_rows"] == [[str(tmp_path / "train.jsonl"), 11, "unreadable_image"]]
        assert summary["unreadable_draws"] == 1
        assert summary["retrieval"]["n"] == 15 and summary["retrieval"]["unreadable_pairs"] == 1
        assert summary["bad_row_details"][0].startswith(
            f"{tmp_path / 'train.jsonl'}: data row 11: unreadable_image when drawn (replaced by "
            f"the next readable row): cannot decode image {tmp_path / 'img' / 'cut.jpg'}: image "
            "file is truncated")


def test_replacement_is_the_next_readable_row(truncated_data):
    from vlp.data.faults import Replacing
    from vlp.data.loader import build_datasets

    data = build_datasets(load_recipe(truncated_data).spec.data)
    replacing = Replacing(data.train)
    pair, faults = replacing[10]
    assert pair.sample_id == data.train[11].sample_id == 12
    assert [(f.row, f.reason) for f in faults] == [(11, "unreadable_image")]
    assert replacing[9][1] == () and torch.equal(replacing[9][0].image, data.train[9].image)


def test_dicom_with_cut_pixel_data_is_replaced_when_drawn(tmp_path):
    """The DICOM header passes the construction check; the pixel data, cut short, fails only
    when the row is drawn."""
    pytest.importorskip("pydicom")
    from dicom_files import write_dicom

    from vlp.data.faults import Replacing
    from vlp.data.manifest import ManifestDataset

    pixels = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    cut = write_dicom(tmp_path / "cut.dcm", pixels)
    cut.write_bytes(cut.read_bytes()[:-4000])
    for i in (0, 2):
        Image.new("L", (8, 8), i * 40).save(tmp_path / f"{i}.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,text\n0.png,Clear.\ncut.dcm,Effusion.\n2.png,Normal.\n")
    ds = ManifestDataset(manifest, image_size=8)
    assert len(ds) == 3 and ds.bad_rows == []  # the header is fine
    pair, faults = Replacing(ds)[1]
    assert pair.sample_id == 3 and pair.text == "Normal."
    assert [(f.row, f.reason) for f in faults] == [(2, "unreadable_image")]
    assert "The number of bytes of pixel data is less than expected" in faults[0].detail


def test_resume_of_a_run_from_an_older_version_fills_new_keys_with_defaults(tiny, tmp_path):
    """A run folder written before a trainer key existed resumes: the missing key takes this
    version's default, which is no change."""
    import yaml

    out = tmp_path / "run"
    assert train_main([str(tiny), "--out", str(out), "--stop-after", "2", "--no-eval"]) == 0
    saved = out / "recipe.yaml"
    older = yaml.safe_load(saved.read_text())
    del older["trainer"]["grad_checkpointing"]  # as an older vlp wrote it
    saved.write_text(yaml.safe_dump(older, sort_keys=False))
    assert train_main([str(tiny), "--out", str(out), "--resume", "latest", "--no-eval"]) == 0
