"""Input pipeline speed: loader samples/s for real-size images next to a training step's need.

    python -m bench.input_pipeline [--images 48] [--size 1024] [--workers 0 2]

Writes 1024 px 16-bit PNG and 12-bit DICOM chest-sized images (and 256 px PNG copies, as
`vlp data prepare --resize 256` makes) to a temporary folder, then times a full DataLoader
pass (decode + resize to data.image_size in the workers, collate with tokenisation) for each
format and worker count, and one training step of the recipe (forward, backward, AdamW). A
loader slower than the step starves the accelerator: add workers or pre-resize.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import REPO, model_and_batch, time_alternating
from vlp.core.optim import build_optimizer
from vlp.core.trainer import step_generator
from vlp.data.collate import Collator
from vlp.data.demo import demo_reports
from vlp.data.manifest import ManifestDataset
from vlp.data.prepare import resized_copy
from vlp.data.tokenize import train_tokenizer

sys.path.insert(0, str(REPO / "tests"))
from dicom_files import write_dicom  # noqa: E402


def radiograph(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth 12-bit image with noise (compresses like a radiograph, not like flat colour)."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = 2000 + 1500 * np.sin(6 * x) * np.cos(4 * y)
    return np.clip(base + rng.normal(0, 60, (size, size)), 0, 4095).astype(np.uint16)


def write_images(folder: Path, n: int, size: int) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    reports = demo_reports(n)
    rows: dict[str, list[dict[str, str]]] = {"png 16-bit": [], "dicom 12-bit": [],
                                             "png 256 px copy": []}
    for i in range(n):
        pixels = radiograph(rng, size)
        png = folder / f"{i}.png"
        Image.fromarray(pixels * 16).save(png)
        dcm = write_dicom(folder / f"{i}.dcm", pixels)
        small = folder / "small" / f"{i}.png"
        resized_copy(png, small, 256)
        for name, path in zip(rows, (png, dcm, small)):
            rows[name].append({"image": str(path), "text": reports[i]})
    manifests = {}
    for name, entries in rows.items():
        manifests[name] = folder / f"{name.replace(' ', '_')}.jsonl"
        manifests[name].write_text("".join(json.dumps(r) + "\n" for r in entries))
    return manifests


def loader_rate(manifest: Path, collate: Collator, image_size: int, batch: int,
                workers: int) -> float:
    data = ManifestDataset(manifest, image_size=image_size, in_chans=1)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, collate_fn=collate,
                                         num_workers=workers)
    start = time.perf_counter()
    n = sum(len(b) for b in loader)  # includes worker start-up, as a training run pays once
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipe", default="recipes/clip.yaml")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    recipe, model, batch = model_and_batch(args.recipe, [f"data.image_size={args.image_size}",
                                                         "trainer.batch_size=32"])
    opt = build_optimizer(model, recipe.spec.optim)

    def step() -> None:
        loss, _, _ = model(batch, step_generator(torch.device("cpu"), 0, 0))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = time_alternating({"step": step}, args.repeats)["step"]
    need = len(batch) / seconds
    collate = Collator(train_tokenizer(demo_reports(500), vocab_size=500),
                       recipe.spec.data.max_text_len)
    print(f"{args.images} images of {args.size} px, resized to {args.image_size} px; "
          f"threads {torch.get_num_threads()}")
    print(f"training step ({args.recipe}, batch {len(batch)}, {args.image_size} px): "
          f"{need:8.1f} samples/s")
    with tempfile.TemporaryDirectory() as tmp:
        manifests = write_images(Path(tmp), args.images, args.size)
        print(f"{'source':>16} {'workers':>7} {'loader samples/s':>17} {'loader / step':>13}")
        for name, manifest in manifests.items():
            for workers in args.workers:
                rate = loader_rate(manifest, collate, args.image_size, 16, workers)
                print(f"{name:>16} {workers:>7} {rate:17.1f} {rate / need:13.2f}")


if __name__ == "__main__":
    main()
