"""CrossAttentionFusion: shapes, padding invariance, conditioning on the image, co-attention
layers, and gradients to both inputs."""

from __future__ import annotations

import pytest
import torch

from vlp.encoders.fusion import CrossAttentionFusion

IMAGE_WIDTH, TEXT_WIDTH = 24, 32
B, L, T = 3, 5, 7


def make_fusion(bidirectional: bool, layers: int = 2, width: int | None = None,
                seed: int = 0) -> CrossAttentionFusion:
    torch.manual_seed(seed)
    params = CrossAttentionFusion.Params(layers=layers, heads=2, width=width,
                                         bidirectional=bidirectional)
    return CrossAttentionFusion(params, IMAGE_WIDTH, TEXT_WIDTH).eval()


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(B, L, IMAGE_WIDTH, generator=g)
    text = torch.randn(B, T, TEXT_WIDTH, generator=g)
    lengths = torch.tensor([T, 4, 2])  # rows with their own padding already
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return image, text, mask


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("width", [None, 16])
def test_output_shapes(bidirectional, width):
    fusion = make_fusion(bidirectional, width=width)
    image, text, mask = inputs()
    out = fusion(image, text, mask)
    w = width or TEXT_WIDTH
    assert fusion.width == w
    assert out.text.shape == (B, T, w)
    assert out.image.shape == (B, L, w)
    assert torch.equal(out.text_mask, mask)
    assert len(out.image_layers) == (2 if bidirectional else 0)
    for layer in out.image_layers:
        assert layer.shape == (B, L, w)


def test_width_must_divide_heads():
    with pytest.raises(ValueError, match="divisible"):
        CrossAttentionFusion.Params(width=30, heads=4)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_appended_padding_does_not_change_real_positions(bidirectional):
    fusion = make_fusion(bidirectional)
    image, text, mask = inputs()
    extra = 4
    noise = torch.randn(B, extra, TEXT_WIDTH, generator=torch.Generator().manual_seed(9)) * 5
    padded_text = torch.cat([text, noise], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(B, extra, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        short = fusion(image, text, mask)
        long = fusion(image, padded_text, padded_mask)
    real = mask
    torch.testing.assert_close(long.text[:, :T][real], short.text[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(long.image, short.image, rtol=0, atol=1e-5)
    for a, b in zip(long.image_layers, short.image_layers, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_masked_tokens_content_is_ignored_at_real_positions():
    fusion = make_fusion(bidirectional=True)
    image, text, mask = inputs()
    other = text.clone()
    other[~mask] = torch.randn(int((~mask).sum()), TEXT_WIDTH) * 10
    with torch.no_grad():
        a, b = fusion(image, text, mask), fusion(image, other, mask)
    torch.testing.assert_close(a.text[mask], b.text[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(a.image, b.image, rtol=0, atol=1e-5)


def test_one_way_fusion_text_depends_on_image_image_stream_passes_through():
    fusion = make_fusion(bidirectional=False)
    image, text, mask = inputs()
    other_image = image + torch.randn(image.shape, generator=torch.Generator().manual_seed(3))
    other_text = text + torch.randn(text.shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        base = fusion(image, text, mask)
        new_image = fusion(other_image, text, mask)
        new_text = fusion(image, other_text, mask)
    assert (base.text - new_image.text)[mask].abs().max() > 1e-3
    assert base.image.shape == (B, L, TEXT_WIDTH)
    # without co-attention the image stream is the projected input alone: text cannot reach it
    torch.testing.assert_close(new_text.image, base.image, rtol=0, atol=0)
    torch.testing.assert_close(base.image, fusion.image_in(image), rtol=0, atol=0)


def test_co_attention_image_stream_depends_on_text():
    fusion = make_fusion(bidirectional=True, layers=3)
    image, text, mask = inputs()
    other_text = text + torch.randn(text.shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        base = fusion(image, text, mask)
        changed = fusion(image, other_text, mask)
    assert len(base.image_layers) == 3
    assert (base.image - changed.image).abs().max() > 1e-3
    assert (base.image_layers[0] - changed.image_layers[0]).abs().max() > 1e-3


@pytest.mark.parametrize("bidirectional", [False, True])
def test_gradients_reach_image_and_text(bidirectional):
    fusion = make_fusion(bidirectional).train()
    image, text, mask = inputs()
    image.requires_grad_()
    text.requires_grad_()
    out = fusion(image, text, mask)
    out.text[mask].sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert text.grad is not None and text.grad[mask].abs().sum() > 0
    # padded text tokens influence no real output
    torch.testing.assert_close(text.grad[~mask], torch.zeros_like(text.grad[~mask]))
