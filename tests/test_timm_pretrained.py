"""Pretrained timm ViTs: a locally saved checkpoint loads as timm's own model does, normalised
with the pretrained config's mean/std, adapted to 1 channel and to another image size."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from vlp.encoders.timm_vit import TimmViT

ARCH = "vit_base_patch16_clip_224.openai"  # CLIP statistics: a different mean per channel
SMALL = dict(patch_size=8, embed_dim=32, depth=1, num_heads=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An RGB 32 px checkpoint saved to a local file, and the model it came from."""
    torch.manual_seed(0)
    source = timm.create_model(ARCH, pretrained=False, img_size=32, num_classes=0, **SMALL).eval()
    with torch.no_grad():  # non-trivial position embeddings, so resampling shows
        source.pos_embed.normal_(std=0.5)
    path = tmp_path_factory.mktemp("timm") / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    return path, source


def loaded(path, image_size: int, in_chans: int, **kw) -> TimmViT:
    params = TimmViT.Params(arch=ARCH, weights=str(path), **SMALL, **kw)
    return TimmViT(params, image_size=image_size, in_chans=in_chans).eval()


def test_features_equal_timms_own_model_grey_and_resized(checkpoint):
    path, _ = checkpoint
    ours = loaded(path, image_size=48, in_chans=1)
    reference = timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                                  img_size=48, in_chans=1, num_classes=0, **SMALL).eval()
    mean = sum(reference.pretrained_cfg["mean"]) / 3
    std = sum(reference.pretrained_cfg["std"]) / 3
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference.forward_features((x - mean) / std))
    assert ours.grid_size == (6, 6) and ours.vit.pos_embed.shape[1] == 1 + 36


def test_grey_input_is_seen_as_the_rgb_checkpoint_sees_a_grey_image(checkpoint):
    """Independent of timm's loader: summing RGB filters == the RGB model on (x, x, x)."""
    path, source = checkpoint
    ours = loaded(path, image_size=32, in_chans=1, mean=(0.4,), std=(0.3,))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), source.forward_features(((x - 0.4) / 0.3)
                                                                    .expand(-1, 3, -1, -1)),
                                   atol=1e-5, rtol=1e-4)


def test_rgb_mean_and_std_come_from_the_pretrained_config(checkpoint):
    path, source = checkpoint
    ours = loaded(path, image_size=32, in_chans=3)
    mean = torch.tensor(source.pretrained_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(source.pretrained_cfg["std"]).view(3, 1, 1)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), source.forward_features((x - mean) / std))
        every = torch.arange(ours.num_patches).expand(2, -1)  # the visible-patch path too
        torch.testing.assert_close(ours(x, every), ours(x))


def test_recipe_mean_and_std_without_weights():
    params = TimmViT.Params(arch="vit_tiny_patch16_224", mean=(0.2,), std=(0.5,), **SMALL)
    enc = TimmViT(params, image_size=32, in_chans=1).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), enc.vit.forward_features((x - 0.2) / 0.5))
    plain = TimmViT(TimmViT.Params(arch="vit_tiny_patch16_224", **SMALL), 32, 1).eval()
    assert not plain.normalised  # random init, no statistics given: pixels stay in [0, 1]
    with pytest.raises(ValueError, match="set both mean and std"):
        TimmViT.Params(arch="vit_tiny_patch16_224", mean=(0.5,))
