"""The benchmark scripts run end to end at a tiny size on CPU and print their side-by-side
ratios (the figures themselves live in docs/benchmarks.md; no timing is asserted)."""

from __future__ import annotations

import re

from bench import accumulation, checkpointing_compile, diagnostics, gpu

TINY_SETS = [a for s in gpu.TINY + ["trainer.batch_size=8"] for a in ("--set", s)]


def test_gpu_bench_runs_tiny_on_cpu_with_open_clip_beside_itc(capsys):
    gpu.main(["--scale", "tiny", "--device", "cpu", "--precision", "fp32", "--batch", "8",
              "--steps", "1", "--peak-tflops", "1"])
    out = capsys.readouterr().out
    for name in ("vlp clip", "open_clip (same sizes)", "vlp uni_mlip", "vlp mpma"):
        row = next(ln for ln in out.splitlines() if ln.strip().startswith(name))
        batch, samples, ms, _, gflop, mfu = (c.strip() for c in row.split("|")[1:])
        assert batch == "8" and float(samples) > 0 and float(ms) > 0
        assert float(gflop) > 0 and mfu.endswith("%")
    assert re.search(r"vlp clip samples/s / open_clip samples/s: \d+\.\d{3}", out)


def test_accumulation_and_checkpointing_benches_print_ratios(capsys):
    accumulation.main(["--repeats", "1", "--ks", "2", *TINY_SETS])
    checkpointing_compile.main(["--repeats", "1", "--no-compile", "--recipe",
                                "recipes/clip.yaml", *TINY_SETS])
    out = capsys.readouterr().out
    assert re.search(r"ratio to the whole batch: k=2 \d+\.\d{3}", out)
    assert re.search(r"ratio checkpointing / eager: time \d+\.\d{3}, saved memory 0\.\d{3}", out)


def test_diagnostics_bench_prints_its_ratio(capsys):
    diagnostics.main(["--repeats", "1", "--recipe", "recipes/clip.yaml", *TINY_SETS])
    assert re.search(r"diagnostic / training step: \d+\.\d{3}", capsys.readouterr().out)
