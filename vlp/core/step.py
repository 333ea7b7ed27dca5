"""The per-step feature cache: each (encoder, view) pass runs once per step and is shared.

Objectives ask for features by view name; nothing is computed until asked for, so an objective
with weight 0 (never built) costs nothing, nor do views only it would have read. Pass counts are
plain Python ints (no host sync) and go into the step's metrics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from vlp.core.features import FusedFeatures, ImageFeatures, TextFeatures
from vlp.core.views import ImageView, TextView, ViewOutput
from vlp.data.batch import Batch
from vlp.seeding import mix_seed

if TYPE_CHECKING:
    from vlp.core.model import VLPModel


class Step:
    """Lazily computed, memoised features of one batch for one optimisation step."""

    def __init__(self, model: VLPModel, batch: Batch, generator: torch.Generator):
        self.model = model
        self.batch = batch
        self.generator = generator
        self.passes: Counter[str] = Counter()
        self._memo: dict[tuple, Any] = {}

    def _once(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def generator_for(self, name: str) -> torch.Generator:
        """An independent random stream per view (or sampler) for this step: switching one
        objective off leaves every other view's masks unchanged, so ablations compare alike."""
        seed = mix_seed(self.generator.initial_seed(), name)
        return torch.Generator(self.batch.image.device).manual_seed(seed)

    # views -------------------------------------------------------------------------------
    def view(self, name: str) -> ViewOutput:
        """The view `name`: the built-ins 'image' and 'text', or a recipe-defined masked view."""
        def make() -> ViewOutput:
            if name == "image":
                return ViewOutput(image=ImageView(self.batch.image))
            if name == "text":
                return ViewOutput(text=TextView(self.batch.input_ids, self.batch.attention_mask))
            self.passes[f"masker/{name}"] += 1
            return self.model.maskers[name](self, self.generator_for(f"view/{name}"))
        return self._once(("view", name), make)

    def image_view(self, name: str = "image") -> ImageView:
        view = self.view(name).image
        if view is None:
            raise KeyError(f"view '{name}' has no image part")
        return view

    def text_view(self, name: str = "text") -> TextView:
        view = self.view(name).text
        if view is None:
            raise KeyError(f"view '{name}' has no text part")
        return view

    # encoder passes ----------------------------------------------------------------------
    def image(self, view: str = "image") -> ImageFeatures:
        def encode() -> ImageFeatures:
            v = self.image_view(view)
            self.passes[f"image_encoder/{view}"] += 1
            enc = self.model.image_encoder
            return ImageFeatures(enc(v.pixels, v.ids_keep), enc.num_prefix_tokens, v, enc.pool)
        return self._once(("image", view), encode)

    def text(self, view: str = "text") -> TextFeatures:
        def encode() -> TextFeatures:
            v = self.text_view(view)
            self.passes[f"text_encoder/{view}"] += 1
            enc = self.model.text_encoder
            return TextFeatures(enc(v.input_ids, v.attention_mask), v, enc.pool)
        return self._once(("text", view), encode)

    def fused(self, image_view: str = "image", text_view: str = "text") -> FusedFeatures:
        def fuse() -> FusedFeatures:
            img, txt = self.image(image_view), self.text(text_view)
            self.passes[f"fusion/{image_view}+{text_view}"] += 1
            return self.model.fusion(img.tokens, txt.tokens, txt.mask)
        return self._once(("fused", image_view, text_view), fuse)

    def fuse(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor,
             text_mask: torch.Tensor, tag: str) -> FusedFeatures:
        """An uncached fusion pass over re-paired tokens (e.g. ITM negatives), counted as `tag`."""
        self.passes[f"fusion/{tag}"] += 1
        return self.model.fusion(image_tokens, text_tokens, text_mask)

    # shared projections --------------------------------------------------------------------
    def image_embedding(self, view: str = "image") -> torch.Tensor:
        """L2-normalised projection of the pooled image feature, (B, embed_dim)."""
        return self._once(("image_emb", view), lambda: F.normalize(
            self.model.image_proj(self.image(view).pooled), dim=-1))

    def text_embedding(self, view: str = "text") -> torch.Tensor:
        """L2-normalised projection of the pooled text feature, (B, embed_dim)."""
        return self._once(("text_emb", view), lambda: F.normalize(
            self.model.text_proj(self.text(view).pooled), dim=-1))

    def pass_counts(self) -> dict[str, int]:
        """Passes per encoder (summed over views) and per encoder/view."""
        totals: Counter[str] = Counter()
        for key, n in self.passes.items():
            totals[key.split("/")[0]] += n
        return {f"passes/{k}": v for k, v in {**totals, **self.passes}.items()}
