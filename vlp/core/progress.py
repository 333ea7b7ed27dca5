"""Progress a person can follow: a tqdm bar on a terminal, plain lines in a batch job's log.

When stderr is not a terminal (nohup, a scheduler, a pipe) the bar would show nothing, so every
`log_every` steps one line goes to stdout instead, and each slow phase (data set check, tokenizer
training, evaluation) prints one line when it ends. Only rank 0 speaks.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from tqdm import tqdm

from vlp.core import distributed as D


def is_terminal() -> bool:
    return sys.stderr.isatty()


def clock(seconds: float) -> str:
    """H:MM:SS."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_line(step: int, total: int, loss: float, samples_per_s: float, elapsed: float,
                  eta: float | None) -> str:
    """One plain progress line: step/total, loss, throughput, elapsed time and ETA."""
    eta_text = clock(eta) if eta is not None else "?"
    return (f"step {step}/{total} ({100 * step / total:.0f}%)  loss {loss:.4f}  "
            f"{samples_per_s:.1f} samples/s  elapsed {clock(elapsed)}  ETA {eta_text}")


_phase_stream: list[TextIO | None] = [None]  # None: stdout in batch jobs, stderr on a terminal


@contextlib.contextmanager
def phases_to(stream: TextIO) -> Iterator[None]:
    """Send status lines to `stream` meanwhile (stderr, for commands whose stdout is a result)."""
    before, _phase_stream[0] = _phase_stream[0], stream
    try:
        yield
    finally:
        _phase_stream[0] = before


def say(text: str) -> None:
    """A status line from rank 0 (stdout in batch jobs, stderr on a terminal)."""
    if D.rank() != 0:
        return
    stream = _phase_stream[0] or (sys.stderr if is_terminal() else sys.stdout)
    print(text, file=stream, flush=True)


@contextlib.contextmanager
def phase(label: str) -> Iterator[dict[str, Any]]:
    """Time a slow phase and print one line when it ends; the yielded dict adds details."""
    start = time.perf_counter()
    details: dict[str, Any] = {}
    yield details
    extra = "".join(f", {value}" for value in details.values())
    say(f"{label}: done in {time.perf_counter() - start:.1f} s{extra}")


class TrainProgress:
    """The bar (terminal) or the progress lines (batch job) of one training run."""

    def __init__(self, name: str, start: int, total: int, end: int):
        self.start, self.total, self.end = start, total, end
        self.begun = time.perf_counter()
        self.speaks = D.rank() == 0
        self.lines = self.speaks and not is_terminal()
        self.bar = tqdm(total=total, initial=start, disable=not self.speaks or self.lines,
                        dynamic_ncols=True, desc=name)

    def eta(self, step: int) -> float | None:
        """Seconds until `end`, from this process's mean step time so far."""
        done = step - self.start
        if done <= 0:
            return None
        return (time.perf_counter() - self.begun) / done * (self.end - step)

    def logged(self, step: int, loss: float, samples_per_s: float) -> None:
        self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_s:.0f}")
        if self.lines:
            print(progress_line(step, self.total, loss, samples_per_s,
                                time.perf_counter() - self.begun, self.eta(step)), flush=True)

    def advance(self) -> None:
        self.bar.update(1)

    def close(self) -> float:
        """Close the bar; seconds since the loop began."""
        self.bar.close()
        return time.perf_counter() - self.begun


def final_report(summary: dict[str, Any]) -> str:
    """A few lines for the end of a run: losses, held-out metrics, bad rows, the run folder."""
    final = summary.get("final") or {}
    losses = ", ".join(f"{k} {v:.4f}" for k, v in final.items() if k.startswith("loss"))
    lines = [f"finished step {summary['steps']}/{summary['max_steps']} in "
             f"{clock(summary.get('train_seconds', 0))}" + (f": {losses}" if losses else "")]
    heldout = summary.get("retrieval")
    if heldout:
        shown = ", ".join(f"{k} {v:.1f}" for k, v in heldout.items() if "R@" in k or k == "mean_R")
        lines.append(f"held-out retrieval (n={heldout.get('n')}): {shown}")
    else:
        lines.append(f"held-out retrieval: not run ({summary.get('eval_skipped', 'skipped')})")
    if summary.get("best"):
        best = summary["best"]
        lines.append(f"best checkpoint by {best['metric']}: {best['value']:.2f} at step "
                     f"{best['step']} ({best['path']})")
    skipped = summary.get("skipped_rows") or {}
    bad = {k: v for k, v in skipped.items() if v}
    lines.append("bad data rows: " + (", ".join(f"{k} {v}" for k, v in bad.items()) if bad
                                       else "none"))
    lines.append(f"run folder: {summary['run_dir']}")
    return "\n".join(lines)
