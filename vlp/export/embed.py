"""Embeddings of a manifest's images and/or reports with a run's encoders, with their ids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlp.core.run import Run
from vlp.core.step import Step
from vlp.data.loader import eval_loader, manifest_for_run
from vlp.export.errors import ExportError

KINDS = ("image", "text")


@torch.no_grad()
def embed_dataset(run: Run, dataset, what: Sequence[str]) -> dict[str, torch.Tensor]:
    """{"id": (N,), "image": (N, D), "text": (N, D)}: L2-normalised, as retrieval uses them."""
    run.model.eval()
    out: dict[str, list[torch.Tensor]] = {"id": [], **{k: [] for k in what}}
    spec = run.recipe.spec
    for batch in eval_loader(dataset, run.collate, spec.eval.batch_size, spec.data.num_workers):
        step = Step(run.model, batch.to(run.device), torch.Generator(run.device))
        out["id"].append(batch.sample_id)
        if "image" in what:
            out["image"].append(step.image_embedding("image").float().cpu())
        if "text" in what:
            out["text"].append(step.text_embedding("text").float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def write_embeddings(embeddings: dict[str, torch.Tensor], out: Path) -> Path:
    """`.safetensors` (tensors id, image, text) or `.parquet` (columns id, image, text)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in embeddings.items()}, str(out))
    elif out.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ExportError("Parquet output needs pyarrow: pip install -e '.[export]'") from None
        columns = {k: v.tolist() for k, v in embeddings.items()}
        pq.write_table(pa.table(columns), str(out))
    else:
        raise ExportError(f"{out}: unknown output suffix {out.suffix!r}; use .safetensors or "
                          ".parquet")
    return out


def embed_manifest(run: Run, manifest: Path, out: Path, what: Sequence[str] = KINDS
                   ) -> tuple[Path, int, dict[str, int]]:
    """Embed every usable row of `manifest`; returns the file, the rows written, bad rows."""
    unknown = sorted(set(what) - set(KINDS))
    if unknown or not what:
        raise ExportError(f"--what takes image and/or text, got {', '.join(what) or 'nothing'}")
    dataset = manifest_for_run(run.recipe.spec.data, manifest)
    if len(dataset) == 0:
        raise ExportError(f"{manifest}: no usable rows to embed")
    embeddings = embed_dataset(run, dataset, what)
    bad = {k: v for k, v in dataset.skipped.items() if v}
    return write_embeddings(embeddings, out), len(dataset), bad
