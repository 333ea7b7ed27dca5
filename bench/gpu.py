"""Throughput, peak memory and model FLOPs utilisation of vlp's training step, and the ITC
baseline against open_clip's step with towers of the same size, in one run.

    python -m bench.gpu                          # paper scale on the GPU, bf16, largest batch
    python -m bench.gpu --batch 128 --steps 20   # a fixed batch
    python -m bench.gpu --scale tiny --device cpu --precision fp32 --batch 8 --steps 2

Paper scale: ViT-B/16 at 224 px and a 12 x 768 BERT-sized text encoder (recipes/base/
paper_scale.yaml) under the clip, uni_mlip and mpma recipes. FLOPs of one forward and backward
are counted with torch.utils.flop_counter.FlopCounterMode (matmuls and attention: what MFU
counts); MFU = FLOPs per step / seconds per step / the device's dense bf16 peak (--peak-tflops,
known for A100/H100/H200). `--batch auto` doubles the batch until it no longer fits.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from bench.common import REPO, model_and_batch
from vlp.core.optim import build_optimizer
from vlp.core.trainer import forward_backward

RECIPES = ("clip", "uni_mlip", "mpma")
#: dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment
PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}
#: the per-recipe sizes that the paper-scale base leaves at demo values
PAPER_EXTRA = {"uni_mlip": ["model.fusion.heads=12"],
               "mpma": ["model.fusion.heads=12", "objectives.mim.decoder_width=512",
                        "objectives.mim.decoder_heads=16"]}
TINY = ["data.image_size=32", "data.max_text_len=40", "model.image_encoder.embed_dim=32",
        "model.image_encoder.depth=1", "model.image_encoder.num_heads=2",
        "model.text_encoder.layers=1", "model.text_encoder.width=32",
        "model.text_encoder.heads=2", "model.embed_dim=16", "model.tokenizer.vocab_size=300"]
TINY_EXTRA = {"uni_mlip": ["model.fusion.heads=2", "objectives.simsiam.dim=32",
                           "objectives.simsiam.pred_dim=16"],
              "mpma": ["model.fusion.slots=16", "model.fusion.topk=4",
                       "objectives.mim.decoder_width=16"]}


def _dotted(tree: dict, prefix: str = "") -> list[str]:
    """A YAML mapping as --set overrides (key.sub=value)."""
    out = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += _dotted(value, name + ".")
        else:
            out.append(f"{name}={yaml.safe_dump(value, default_flow_style=True).strip()}"
                       .removesuffix("\n..."))
    return out


def overrides(recipe: str, scale: str) -> list[str]:
    if scale == "tiny":
        return TINY + TINY_EXTRA.get(recipe, [])
    paper = yaml.safe_load((REPO / "recipes" / "base" / "paper_scale.yaml").read_text())
    return _dotted(paper) + PAPER_EXTRA.get(recipe, [])


@dataclass
class Measured:
    name: str
    batch: int
    seconds: float  # per step (median)
    flops: float  # per step, forward + backward
    peak_bytes: int | None

    def row(self, peak_tflops: float | None) -> str:
        mfu = (f"{100 * self.flops / self.seconds / (peak_tflops * 1e12):5.1f}%"
               if peak_tflops else "  n/a")
        memory = f"{self.peak_bytes / 2 ** 30:7.2f}" if self.peak_bytes is not None else "    n/a"
        return (f"{self.name:>22} | {self.batch:5d} | {self.batch / self.seconds:9.1f} | "
                f"{self.seconds * 1000:9.1f} | {memory} | {self.flops / 1e9:10.2f} | {mfu}")


HEADER = (f"{'step':>22} | batch | samples/s |   ms/step | peak GiB | GFLOP/step |   MFU\n"
          + "-" * 88)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, batch: int, step: Callable[[], None], forward_backward_once:
            Callable[[], None], device: torch.device, steps: int, warmup: int = 2) -> Measured:
    """Median seconds of `step` (after warm-up), FLOPs of one forward+backward, peak memory."""
    with FlopCounterMode(display=False) as counter:
        forward_backward_once()
    flops = counter.get_total_flops()
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return Measured(name, batch, sorted(times)[len(times) // 2], flops, peak)


def vlp_candidate(recipe: str, args, batch_size: int):
    """vlp's trainer step (forward_backward, clipping, AdamW) for a recipe at a batch size."""
    rec, model, batch = model_and_batch(f"recipes/{recipe}.yaml", [
        *overrides(recipe, args.scale), f"trainer.batch_size={batch_size}"])
    device = torch.device(args.device)
    model.to(device)
    batch = batch.to(device)
    opt = build_optimizer(model, rec.spec.optim)
    clip = rec.spec.trainer.grad_clip

    def once() -> None:
        forward_backward(model, batch, 0, 0, 1, args.precision)

    def step() -> None:
        once()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, batch, once, step, clip


def open_clip_candidate(model, batch, args, clip: float):
    """open_clip's CLIP with the same image tower (timm, same arch and size), a text tower of
    the same width/depth/heads (bidirectional), its ClipLoss and the step of open_clip_train."""
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vit, text = model.image_encoder.vit, model.text_encoder
    image_size = batch.image.shape[-1]
    vision = CLIPVisionCfg(timm_model_name=None, layers=len(vit.blocks), width=vit.embed_dim,
                           head_width=vit.embed_dim // vit.blocks[0].attn.num_heads,
                           patch_size=model.image_encoder.patch_size, image_size=image_size,
                           pool_type="avg")
    text_cfg = CLIPTextCfg(context_length=batch.input_ids.shape[1],
                           vocab_size=text.token_embed.num_embeddings, width=text.width,
                           heads=text.params.heads, layers=text.params.layers,
                           no_causal_mask=True, pool_type="first")
    device = torch.device(args.device)
    oc = CLIP(model.image_proj.out_features, vision, text_cfg).to(device)
    opt = torch.optim.AdamW(oc.parameters(), lr=1e-4, weight_decay=0.05)
    loss_fn = ClipLoss()
    images = batch.image.expand(-1, 3, -1, -1).contiguous()  # open_clip's towers take RGB
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else torch.autocast(device.type, enabled=False))

    def once() -> None:
        with autocast:
            image_features, text_features, scale = oc(images, batch.input_ids)
            loss = loss_fn(image_features, text_features, scale)
        loss.backward()

    def step() -> None:
        once()
        torch.nn.utils.clip_grad_norm_(oc.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            oc.logit_scale.clamp_(0, 4.6052)  # as open_clip_train does after each step
    return oc, once, step


def _fits(recipe: str, args, batch_size: int) -> bool:
    try:
        _, _, _, step, _ = vlp_candidate(recipe, args, batch_size)
        step()
        step()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def largest_batch(recipe: str, args) -> int:
    """Double the batch from --min-batch until a step no longer fits (CUDA only)."""
    size = args.min_batch
    while size * 2 <= args.max_batch and _fits(recipe, args, size * 2):
        size *= 2
    return size


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--scale", choices=("paper", "tiny"), default="paper")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--batch", default="auto", help="per-step batch, or 'auto' (CUDA)")
    ap.add_argument("--min-batch", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--no-open-clip", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = args.peak_tflops
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    if peak is None and device.type == "cuda":
        peak = next((v for k, v in PEAKS.items() if k in name), None)
    print(f"device {name}, precision {args.precision}, scale {args.scale}, torch "
          f"{torch.__version__}, peak {peak or 'unknown'} TFLOP/s")
    print(HEADER)
    for recipe in args.recipes.split(","):
        if args.batch == "auto":
            if device.type != "cuda":
                raise SystemExit("--batch auto needs CUDA; pass --batch N")
            size = largest_batch(recipe, args)
        else:
            size = int(args.batch)
        model, batch, once, step, clip = vlp_candidate(recipe, args, size)
        vlp = measure(f"vlp {recipe}", size, step, once, device, args.steps)
        print(vlp.row(peak), flush=True)
        if recipe == "clip" and not args.no_open_clip:
            oc, oc_once, oc_step = open_clip_candidate(model, batch, args, clip)
            theirs = measure("open_clip (same sizes)", size, oc_step, oc_once, device,
                             args.steps)
            print(theirs.row(peak))
            print(f"{'ratio':>22} | vlp clip samples/s / open_clip samples/s: "
                  f"{theirs.seconds / vlp.seconds:.3f}", flush=True)
            del oc, oc_once, oc_step
        del model, batch, once, step
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
