"""`vlp export RUN OUT --format ...`: write a run's encoders for another library."""

from __future__ import annotations

from pathlib import Path

from vlp.core.run import load_run
from vlp.export.errors import ExportError

FORMATS = ("timm", "hf", "open_clip")


def export_run(run_dir: Path, out: Path, fmt: str, checkpoint: str = "latest") -> Path:
    """Rebuild the run from its folder (on CPU) and write `fmt` to the folder `out`."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    run = load_run(Path(run_dir), checkpoint, "cpu")
    run.model.eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "timm":
        from vlp.export.timm_format import export_timm
        return export_timm(run.model, out)
    if fmt == "hf":
        from vlp.export.hf_format import export_hf
        return export_hf(run.model, run.tokenizer, out)
    from vlp.export.open_clip_format import export_open_clip
    return export_open_clip(run.model, run.tokenizer, out)
