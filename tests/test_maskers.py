"""Image maskers: exact patch counts, consistent keep/mask indices, block-shaped masks, and
augmentation that is deterministic, in range, and never flips radiographs unless told to."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from vlp.maskers.augment import Augment, augment_images
from vlp.maskers.patches import (
    BlockPatches,
    RandomPatches,
    block_patch_mask,
    keep_and_mask_from_scores,
    random_patch_mask,
)

CPU = torch.device("cpu")
NO_CHANGE = dict(crop_scale=(1.0, 1.0), max_rotation=0.0, hflip_prob=0.0, brightness=0.0,
                 contrast=0.0, gamma=(1.0, 1.0), color_jitter=0.0, grayscale_prob=0.0)
MEDICAL = dict(crop_scale=(0.7, 1.0), max_rotation=10.0, hflip_prob=0.0, brightness=0.2,
               contrast=0.2, gamma=(0.8, 1.25), color_jitter=0.0, grayscale_prob=0.0,
               saturation=0.0, jitter_prob=1.0, blur_prob=0.0, blur_sigma=(0.1, 2.0))
NATURAL = dict(crop_scale=(0.2, 1.0), max_rotation=0.0, hflip_prob=0.5, brightness=0.4,
               contrast=0.4, gamma=(1.0, 1.0), color_jitter=0.4, grayscale_prob=0.2,
               saturation=0.4, jitter_prob=0.8, blur_prob=0.5, blur_sigma=(0.1, 2.0))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_keep_and_mask(ids_keep: torch.Tensor, mask: torch.Tensor, masked: int) -> None:
    """Every row: `masked` hidden patches; ids_keep sorted, unique, exactly the unmasked ones."""
    rows, n = mask.shape
    assert mask.dtype == torch.bool
    assert ids_keep.shape == (rows, n - masked)
    assert (mask.sum(1) == masked).all()
    assert (ids_keep[:, 1:] > ids_keep[:, :-1]).all(), "ids_keep not strictly increasing"
    for row in range(rows):
        kept = set(ids_keep[row].tolist())
        hidden = set(torch.nonzero(mask[row]).flatten().tolist())
        assert not kept & hidden
        assert kept | hidden == set(range(n))


def masked_neighbours(mask: torch.Tensor, grid: tuple[int, int]) -> float:
    """Mean number of masked 4-neighbours of a masked patch (outside the grid counts as not)."""
    m = mask.view(-1, *grid).float()
    p = torch.nn.functional.pad(m, (1, 1, 1, 1))
    neighbours = p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:]
    return ((neighbours * m).sum() / m.sum()).item()


# --- random patches ------------------------------------------------------------------------------

@pytest.mark.parametrize("n,ratio,masked", [
    (49, 0.3, 15),    # 14.7 -> 15
    (64, 0.6, 38),    # 38.4 -> 38
    (196, 0.75, 147),  # exact
    (16, 0.1, 2),     # 1.6 -> 2
])
def test_random_patch_mask_exact_count_and_consistent_indices(n, ratio, masked):
    ids_keep, mask = random_patch_mask(12, n, ratio, gen(0), CPU)
    check_keep_and_mask(ids_keep, mask, masked)
    assert ids_keep.device == mask.device == CPU
    # rows differ: the draw is per sample
    assert len({tuple(r) for r in mask.tolist()}) > 1


def test_random_patch_mask_deterministic_per_seed():
    a = random_patch_mask(4, 64, 0.5, gen(1), CPU)
    b = random_patch_mask(4, 64, 0.5, gen(1), CPU)
    c = random_patch_mask(4, 64, 0.5, gen(2), CPU)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_random_patch_mask_is_uniform_over_positions():
    _, mask = random_patch_mask(4000, 16, 0.25, gen(3), CPU)
    per_position = mask.float().mean(0)
    assert (per_position - 0.25).abs().max() < 0.03


def test_keep_and_mask_from_scores_keeps_lowest_scores():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.7]])
    ids_keep, mask = keep_and_mask_from_scores(scores, 2)
    assert ids_keep.tolist() == [[1, 3]]
    assert mask.tolist() == [[True, False, True, False, True]]


# --- block patches -------------------------------------------------------------------------------

@pytest.mark.parametrize("grid", [(8, 8), (14, 14), (6, 10)])
@pytest.mark.parametrize("ratio", [0.3, 0.4, 0.6])
def test_block_patch_mask_exact_count(grid, ratio):
    n = grid[0] * grid[1]
    masked = int(round(ratio * n))
    ids_keep, mask = block_patch_mask(16, grid, ratio, gen(0), CPU)
    check_keep_and_mask(ids_keep, mask, masked)


@pytest.mark.parametrize("grid", [(8, 8), (14, 14)])
@pytest.mark.parametrize("ratio", [0.3, 0.4, 0.6])
def test_block_masks_are_blockier_than_random(grid, ratio):
    n = grid[0] * grid[1]
    _, blocks = block_patch_mask(64, grid, ratio, gen(5), CPU)
    _, scattered = random_patch_mask(64, n, ratio, gen(5), CPU)
    block_nb, random_nb = masked_neighbours(blocks, grid), masked_neighbours(scattered, grid)
    assert block_nb > random_nb + 0.5 and block_nb > 1.3 * random_nb, (block_nb, random_nb)


def test_block_patch_mask_deterministic_per_seed():
    a = block_patch_mask(4, (8, 8), 0.4, gen(9), CPU)
    b = block_patch_mask(4, (8, 8), 0.4, gen(9), CPU)
    c = block_patch_mask(4, (8, 8), 0.4, gen(10), CPU)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert not torch.equal(a[1], c[1])


def test_patch_masker_plugins_make_image_views():
    pixels = torch.rand(3, 1, 32, 32)
    step = SimpleNamespace(batch=SimpleNamespace(image=pixels), generator=gen(0))
    ctx = SimpleNamespace(num_patches=16, grid_size=(4, 4))
    random_view = RandomPatches(RandomPatches.Params(ratio=0.5), ctx)(step, gen(0)).image
    block_view = BlockPatches(BlockPatches.Params(ratio=0.25), ctx)(step, gen(0)).image
    assert random_view.pixels is pixels and block_view.pixels is pixels
    check_keep_and_mask(random_view.ids_keep, random_view.mask, 8)
    check_keep_and_mask(block_view.ids_keep, block_view.mask, 4)


# --- augmentation --------------------------------------------------------------------------------

def left_bright(batch: int = 16, size: int = 32, channels: int = 1) -> torch.Tensor:
    """Images bright (0.9) in the left half, dark (0.1) in the right half."""
    x = torch.full((batch, channels, size, size), 0.1)
    x[..., : size // 2] = 0.9
    return x


def half_means(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = x.shape[-1] // 2
    return x[..., :w].mean(dim=(1, 2, 3)), x[..., w:].mean(dim=(1, 2, 3))


@pytest.mark.parametrize("policy,channels", [(MEDICAL, 1), (NATURAL, 3)])
def test_augment_in_range_same_shape_deterministic(policy, channels):
    x = torch.rand(6, channels, 24, 24, generator=gen(0))
    a = augment_images(x, gen(1), **policy)
    b = augment_images(x, gen(1), **policy)
    c = augment_images(x, gen(2), **policy)
    assert a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.allclose(a, x, atol=1e-3)


def test_medical_policy_never_flips():
    x = left_bright(32)
    out = augment_images(x, gen(3), **MEDICAL)
    left, right = half_means(out)
    assert (left > right + 0.2).all(), (left - right).tolist()


def test_medical_policy_with_flip_override_flips_every_image():
    x = left_bright(32)
    out = augment_images(x, gen(3), **{**MEDICAL, "hflip_prob": 1.0})
    left, right = half_means(out)
    assert (right > left + 0.2).all()


def test_no_flip_keeps_bright_left_half():
    x = left_bright()
    left, right = half_means(augment_images(x, gen(4), **NO_CHANGE))
    assert (left > right + 0.5).all(), (left - right).tolist()


def test_flip_is_exact_mirror():
    x = torch.rand(4, 1, 16, 16, generator=gen(5))
    out = augment_images(x, gen(6), **{**NO_CHANGE, "hflip_prob": 1.0}, aspect=(1.0, 1.0))
    torch.testing.assert_close(out, torch.flip(x, dims=[-1]), rtol=0, atol=1e-5)


def test_no_change_settings_with_square_crops_are_identity():
    # full-area square crop, no rotation/flip, identity intensity: the affine grid is the
    # identity and bilinear sampling at pixel centres (align_corners=False) returns the input
    x = torch.rand(4, 3, 16, 20, generator=gen(7))
    out = augment_images(x, gen(8), **NO_CHANGE, aspect=(1.0, 1.0))
    torch.testing.assert_close(out, x.clamp_min(1e-6), rtol=0, atol=1e-5)


def test_no_change_settings_are_identity_with_default_aspect():
    """A full-area crop is the whole image whatever aspect ratio is drawn."""
    x = torch.rand(4, 1, 16, 16, generator=gen(7))
    out = augment_images(x, gen(8), **NO_CHANGE)
    torch.testing.assert_close(out, x.clamp_min(1e-6), rtol=0, atol=1e-5)


def test_augment_settings_merge_policy_with_overrides():
    medical = Augment(Augment.Params(policy="medical", hflip_prob=0.5, gamma=[0.9, 1.1],
                                     brightness=0.0), ctx=None)
    assert medical.settings() == {**MEDICAL, "hflip_prob": 0.5, "gamma": (0.9, 1.1),
                                  "brightness": 0.0}
    natural = Augment(Augment.Params(policy="natural"), ctx=None)
    assert natural.settings() == NATURAL
    assert Augment(Augment.Params(), ctx=None).settings() == MEDICAL


def test_augment_plugin_makes_an_augmented_view():
    x = left_bright(4)
    step = SimpleNamespace(batch=SimpleNamespace(image=x), generator=gen(0))
    view = Augment(Augment.Params(max_rotation=0.0), ctx=None)(step, step.generator).image
    assert view.pixels.shape == x.shape
    assert view.ids_keep is None and view.mask is None
    expected = augment_images(x, gen(0), **{**MEDICAL, "max_rotation": 0.0})
    torch.testing.assert_close(view.pixels, expected)


def test_blur_matches_a_gaussian_kernel_written_out():
    """A single bright pixel blurred with sigma s spreads as the outer product of the
    normalised 1-D Gaussian exp(-d^2 / 2 s^2) (no crop, jitter or gamma)."""
    x = torch.zeros(1, 1, 40, 40)
    x[0, 0, 20, 20] = 1.0
    out = augment_images(x, gen(0), **{**NO_CHANGE, "blur_prob": 1.0, "blur_sigma": (0.8, 0.8)},
                         aspect=(1.0, 1.0))
    radius = 40 // 20
    weights = [math.exp(-d * d / (2 * 0.8 ** 2)) for d in range(-radius, radius + 1)]
    kernel = torch.tensor([w / sum(weights) for w in weights])
    expected = torch.zeros(40, 40)
    expected[20 - radius:21 + radius, 20 - radius:21 + radius] = kernel[:, None] * kernel[None]
    torch.testing.assert_close(out[0, 0], expected.clamp_min(1e-6), rtol=0, atol=1e-6)


def test_colour_jitter_is_applied_with_its_probability():
    x = torch.rand(400, 3, 8, 8, generator=gen(1)) * 0.5 + 0.25
    settings = {**NO_CHANGE, "brightness": 0.4, "saturation": 0.4}
    never = augment_images(x, gen(2), **settings, jitter_prob=0.0, aspect=(1.0, 1.0))
    torch.testing.assert_close(never, x, rtol=0, atol=1e-5)
    half = augment_images(x, gen(2), **settings, jitter_prob=0.5, aspect=(1.0, 1.0))
    changed = (half - x).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert 0.4 < changed.float().mean().item() < 0.6


def test_saturation_keeps_the_grey_level_and_scales_colour():
    x = torch.rand(64, 3, 4, 4, generator=gen(3)) * 0.5 + 0.25
    out = augment_images(x, gen(4), **{**NO_CHANGE, "saturation": 0.4}, aspect=(1.0, 1.0))
    torch.testing.assert_close(out.mean(1), x.mean(1), rtol=0, atol=1e-5)
    ratio = (out - out.mean(1, keepdim=True)).flatten(1).norm(dim=1) / (
        x - x.mean(1, keepdim=True)).flatten(1).norm(dim=1)
    assert ((ratio > 0.6 - 1e-4) & (ratio < 1.4 + 1e-4)).all() and ratio.std() > 0.05
