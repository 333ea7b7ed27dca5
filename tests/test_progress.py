"""Progress a batch job can read: plain lines, phase lines, a final report, summary.json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vlp.cli import train_main
from vlp.core.progress import clock, final_report, progress_line

REPO = Path(__file__).parent.parent
LINE = re.compile(r"^step (\d+)/(\d+) \((\d+)%\)  loss (\d+\.\d{4})  (\d+\.\d) samples/s  "
                  r"elapsed (\d:\d\d:\d\d)  ETA (\d:\d\d:\d\d)$")


def test_shipped_recipe_in_a_batch_job_prints_progress_and_a_report(tmp_path):
    """The README's baseline, shortened (the full 400 steps are the `slow` test), run as under
    nohup: stderr and stdout are files, so there is no bar and plain lines instead."""
    out = tmp_path / "run"
    with (tmp_path / "stdout").open("w") as stdout, (tmp_path / "stderr").open("w") as stderr:
        proc = subprocess.run(
            [sys.executable, "-m", "vlp.cli", "train", str(REPO / "recipes" / "clip.yaml"),
             "--out", str(out), "--set", "trainer.max_steps=30", "--set", "trainer.log_every=10",
             "--set", "data.train_size=320", "--set", "data.val_size=32", "--set",
             "trainer.batch_size=32"], stdout=stdout, stderr=stderr, timeout=300, cwd=tmp_path,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
    text, err = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert proc.returncode == 0, err[-3000:]
    assert "\r" not in text + err  # no progress bar redraws in a log file
    lines = text.splitlines()
    steps = [m for ln in lines if (m := LINE.match(ln))]
    assert [(int(m[1]), int(m[2]), int(m[3])) for m in steps] == [(10, 30, 33), (20, 30, 67),
                                                                  (30, 30, 100)]
    assert steps[-1][7] == "0:00:00"
    assert float(steps[-1][4]) < float(steps[0][4])  # it learns
    logged = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [round(r["loss"], 4) for r in logged] == [float(m[4]) for m in steps]
    assert lines[0].startswith("clip: threads: 1 (OMP_NUM_THREADS)")
    for phase in ("data set check: done in", "tokenizer training: done in", "evaluation: done in"):
        assert sum(ln.startswith(phase) for ln in lines) == 1, phase
    assert "320 training / 32 held-out pairs, 0 bad rows" in text
    summary = json.loads((out / "summary.json").read_text())
    report = text[text.index("finished step 30/30"):]
    assert f"held-out retrieval (n=32): i2t_R@1 {summary['retrieval']['i2t_R@1']:.1f}" in report
    assert "bad data rows: none" in report and f"run folder: {out}" in report


@pytest.mark.parametrize("flags, reason", [(["--no-eval"], "--no-eval"),
                                           (["--stop-after", "2"], "stopped at step 2 of 4")])
def test_every_run_writes_a_summary(write_recipe, tmp_path, capsys, flags, reason):
    path = write_recipe("_base_: tiny_base.yaml\nobjectives: {itc: {weight: 1.0}}\n")
    assert train_main([str(path), "--out", str(tmp_path / "run"), *flags]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["retrieval"] is None and summary["eval_skipped"] == reason
    assert summary["steps"] == (2 if "--stop-after" in flags else 4)
    assert summary["final"]["step"] == summary["steps"]
    assert f"held-out retrieval: not run ({reason})" in capsys.readouterr().out


def test_a_run_stopped_by_a_signal_writes_its_summary(write_recipe, tmp_path, monkeypatch):
    import os
    import signal

    import vlp.core.trainer as trainer_module

    real = trainer_module.step_generator

    def interrupt_at_step_2(device, seed, step, micro_batch=0):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(device, seed, step, micro_batch)

    monkeypatch.setattr(trainer_module, "step_generator", interrupt_at_step_2)
    path = write_recipe("_base_: tiny_base.yaml\nobjectives: {itc: {weight: 1.0}}\n")
    assert train_main([str(path), "--out", str(tmp_path / "run")]) == 128 + signal.SIGTERM
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["retrieval"] is None
    assert summary["eval_skipped"] == "stopped by SIGTERM after step 2"


def test_progress_line_and_report_by_hand():
    assert clock(3725.4) == "1:02:05"
    assert progress_line(25, 400, 1.23456, 55.04, 61, 915) == (
        "step 25/400 (6%)  loss 1.2346  55.0 samples/s  elapsed 0:01:01  ETA 0:15:15")
    report = final_report({"steps": 4, "max_steps": 4, "train_seconds": 3, "run_dir": "/r",
                           "final": {"loss": 1.0, "loss/itc": 1.0, "lr": 0.1},
                           "retrieval": None, "eval_skipped": "--no-eval",
                           "skipped_rows": {"missing_image": 2, "empty_text": 0}})
    assert report.splitlines() == ["finished step 4/4 in 0:00:03: loss 1.0000, loss/itc 1.0000",
                                   "held-out retrieval: not run (--no-eval)",
                                   "bad data rows: missing_image 2", "run folder: /r"]
