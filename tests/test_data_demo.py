"""The demo data set: determinism, disjoint splits, varied reports, findings visible in images.

Image evidence is measured against an image drawn with the same anatomy seed and no findings,
so only the finding itself can explain a difference. Orientation is radiological: the
patient's right is the image's left half.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from vlp.data.demo import (
    DemoDataset,
    Device,
    Effusion,
    Findings,
    Nodule,
    Opacity,
    demo_reports,
    render_chest,
    write_report,
)

SIZE = 64
KEYWORDS = {
    "opacity": ("opacity", "consolidation", "pneumonia", "airspace"),
    "heart": ("cardiomegaly", "enlarged", "enlargement"),
    "effusion": ("effusion",),
    "pneumothorax": ("pneumothorax",),
    "nodule": ("nodule", "nodular"),
    "catheter": ("catheter", "central line"),
    "tube": ("tube",),
}
OTHER = {"left": "right", "right": "left"}


def sentences(report: str) -> list[str]:
    body = re.sub(r"\b(INDICATION|FINDINGS|IMPRESSION):\s*", "", report)
    return [s.lower() for s in re.split(r"(?<=\.)\s+", body.strip()) if s]


def positive(report: str, kind: str) -> list[str]:
    """Sentences that assert a finding of ``kind`` (pertinent negatives excluded)."""
    return [s for s in sentences(report)
            if any(k in s for k in KEYWORDS[kind])
            and not s.startswith(("no ", "there is no "))]


def names(sentence: str, side: str) -> bool:
    return re.search(rf"\b{side}\b", sentence) is not None


def draw(findings: Findings, seed: int = 11, size: int = SIZE) -> np.ndarray:
    return render_chest(findings, np.random.default_rng(seed), size)


def diff(findings: Findings, seed: int = 11) -> np.ndarray:
    """What the findings add to the image of the same anatomy without them."""
    return draw(findings, seed) - draw(Findings(heart=findings.heart), seed)


def half(side: str, size: int = SIZE) -> slice:
    """Image columns of the patient's ``side`` (radiological convention)."""
    return slice(0, size // 2) if side == "right" else slice(size // 2, size)


def row_centroid(weights: np.ndarray) -> float:
    w = np.clip(weights, 0, None).sum(axis=1)
    return float((w * np.arange(len(w))).sum() / w.sum())


def erode(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` whose four neighbours are in it too (drops soft edges)."""
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def heart_width(img: np.ndarray) -> int:
    """Longest run of bright columns in the rows through the heart (the cardiac silhouette)."""
    h = img.shape[0]
    band = img[int(0.58 * h):int(0.66 * h)].mean(axis=0) > 0.5
    best = run = 0
    for bright in band:
        run = run + 1 if bright else 0
        best = max(best, run)
    return best


# ------------------------------------------------------------------- data set behaviour


def test_same_seed_same_item_and_offsets_address_global_items():
    a, b = DemoDataset(6, seed=3), DemoDataset(6, seed=3)
    for i in range(6):
        assert torch.equal(a[i].image, b[i].image) and a[i].text == b[i].text
    shifted = DemoDataset(3, seed=3, offset=3)
    assert torch.equal(shifted[0].image, a[3].image) and shifted[0].text == a[3].text
    assert not torch.equal(shifted[0].image, a[0].image) and shifted[0].text != a[0].text
    other_seed = DemoDataset(6, seed=4)
    assert not torch.equal(other_seed[0].image, a[0].image)


def test_train_and_val_splits_have_disjoint_ids():
    train, val = DemoDataset(40), DemoDataset(15, offset=40)
    train_ids = {train[i].sample_id for i in range(len(train))}
    val_ids = {val[i].sample_id for i in range(len(val))}
    assert train_ids == set(range(40)) and val_ids == set(range(40, 55))
    assert not train_ids & val_ids
    assert {train[i].text for i in range(40)}.isdisjoint(val[i].text for i in range(15))


@pytest.mark.parametrize("image_size", [32, 64, 97, 256])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_image_shape_dtype_and_range(image_size: int, in_chans: int):
    image = DemoDataset(2, image_size=image_size, in_chans=in_chans)[1].image
    assert image.shape == (in_chans, image_size, image_size) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1 and image.std() > 0.1
    assert all(torch.equal(image[0], c) for c in image)


def test_index_bounds_and_arguments():
    ds = DemoDataset(4)
    assert ds[-1].sample_id == 3
    with pytest.raises(IndexError):
        ds[4]
    with pytest.raises(ValueError):
        DemoDataset(4, in_chans=2)


def test_reports_mostly_unique_and_equal_to_dataset_texts():
    reports = demo_reports(1000)
    assert len(set(reports)) >= 900
    ds = DemoDataset(30, seed=2, offset=7)
    assert demo_reports(30, seed=2, offset=7) == [ds[i].text for i in range(30)]
    assert all("FINDINGS:" in r and "IMPRESSION:" in r for r in reports)


def test_normal_fraction_and_normal_reports():
    ds = DemoDataset(1000, seed=1)
    findings = [ds.findings(i) for i in range(1000)]
    normal = [i for i, f in enumerate(findings) if f.is_normal]
    assert 0.12 <= len(normal) / 1000 <= 0.25
    reports = demo_reports(1000, seed=1)
    for i in normal:
        impression = reports[i].split("IMPRESSION:")[1].lower()
        assert "acute" in impression or "normal" in impression
        assert not any(positive(reports[i], kind) for kind in KEYWORDS)


def check_report(f: Findings, report: str) -> None:
    """Each finding present is asserted with its side; absent findings are not asserted."""
    present = {"opacity": f.opacity, "heart": f.heart != "normal", "effusion": f.effusion,
               "pneumothorax": f.pneumothorax, "nodule": f.nodule,
               "catheter": f.device and f.device.kind == "catheter",
               "tube": f.device and f.device.kind == "tube"}
    for kind, is_present in present.items():
        assert bool(positive(report, kind)) == bool(is_present), (kind, report)
    sided = {"opacity": f.opacity and f.opacity.side, "pneumothorax": f.pneumothorax,
             "nodule": f.nodule and f.nodule.side,
             "catheter": f.device and f.device.side,
             "effusion": f.effusion and f.effusion.side}
    for kind, side in sided.items():
        for sentence in positive(report, kind) if side else []:
            if side == "bilateral":
                assert "bilateral" in sentence or "both" in sentence, sentence
            else:
                assert names(sentence, side) and not names(sentence, OTHER[side]), sentence
    if f.heart != "normal":
        words = ("mild",) if f.heart == "mild" else ("marked", "severe")
        assert all(any(w in s for w in words) for s in positive(report, "heart")), report
    if f.opacity:
        zone = {"upper": ("upper",), "middle": ("mid",), "lower": ("lower", "basal")}
        assert all(any(w in s for w in zone[f.opacity.zone])
                   for s in positive(report, "opacity")), report


def test_reports_state_exactly_the_drawn_findings():
    ds = DemoDataset(400, seed=5)
    for i, report in enumerate(demo_reports(400, seed=5)):
        check_report(ds.findings(i), report)


# ------------------------------------------------------------------- image evidence


@pytest.mark.parametrize("side", ["left", "right"])
def test_opacity_brightens_the_lung_of_the_named_side(side: str):
    rng = np.random.default_rng(0)
    f = Findings(opacity=Opacity(side, "middle", "large"))
    assert all(names(s, side) for s in positive(write_report(f, rng), "opacity"))
    d = diff(f)
    same, other = d[:, half(side)], d[:, half(OTHER[side])]
    assert same.sum() > 20 and same.sum() > 50 * np.abs(other).sum()
    lung_rows = slice(int(0.2 * SIZE), int(0.8 * SIZE))
    img = draw(f)
    gap = img[lung_rows, half(side)].mean() - img[lung_rows, half(OTHER[side])].mean()
    base = draw(Findings())
    base_gap = base[lung_rows, half(side)].mean() - base[lung_rows, half(OTHER[side])].mean()
    assert gap > base_gap + 0.02


def test_opacity_zone_and_size_are_drawn():
    centroids = [row_centroid(diff(Findings(opacity=Opacity("right", zone, "small"))))
                 for zone in ("upper", "middle", "lower")]
    assert centroids[0] + 4 < centroids[1] < centroids[2] - 4
    small = diff(Findings(opacity=Opacity("left", "upper", "small"))).sum()
    large = diff(Findings(opacity=Opacity("left", "upper", "large"))).sum()
    assert large > 2 * small > 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cardiomegaly_widens_the_heart_silhouette(seed: int):
    widths = [heart_width(draw(Findings(heart=h), seed)) for h in ("normal", "mild", "marked")]
    assert widths[0] + 3 <= widths[1] and widths[1] + 3 <= widths[2]
    assert 0.25 * SIZE < widths[0] < 0.45 * SIZE


@pytest.mark.parametrize("side", ["left", "right", "bilateral"])
def test_effusion_fills_the_named_costophrenic_angle(side: str):
    d = diff(Findings(effusion=Effusion(side, "moderate")))
    lower = d[SIZE // 2:]
    sides = ("left", "right") if side == "bilateral" else (side,)
    for s in ("left", "right"):
        filled = lower[:, half(s)].sum()
        assert (filled > 10) if s in sides else (abs(filled) < 0.5)
    assert row_centroid(d) > 0.55 * SIZE
    small = diff(Findings(effusion=Effusion(side, "small"))).sum()
    assert 0 < small < d.sum()


@pytest.mark.parametrize("side", ["left", "right"])
def test_pneumothorax_darkens_a_rim_without_markings(side: str):
    d = diff(Findings(pneumothorax=side))
    assert d[:, half(side)].sum() < -5 and np.abs(d[:, half(OTHER[side])]).sum() < 0.5
    rim = erode(d < -0.06)
    assert rim.sum() > 20 and row_centroid(rim.astype(float)) < 0.5 * SIZE  # apical, not basal
    with_ptx, without = draw(Findings(pneumothorax=side)), draw(Findings())
    assert with_ptx[rim].mean() < without[rim].mean() - 0.08
    assert with_ptx[rim].std() < 0.8 * without[rim].std()  # the lung markings are gone


@pytest.mark.parametrize(("side", "zone"), [("left", "upper"), ("right", "lower")])
def test_nodule_is_a_small_bright_spot_on_the_named_side(side: str, zone: str):
    d = diff(Findings(nodule=Nodule(side, zone, 10)))
    spot = d > 0.1
    assert d.max() > 0.3 and 0 < spot.sum() < 0.01 * SIZE * SIZE
    assert spot[:, half(side)].sum() == spot.sum()
    assert (row_centroid(spot.astype(float)) < SIZE / 2) == (zone == "upper")


@pytest.mark.parametrize("side", ["left", "right"])
def test_catheter_enters_from_the_named_side_of_the_neck(side: str):
    d = diff(Findings(device=Device("catheter", side)))
    line = d > 0.2
    neck = line[: SIZE // 5]
    assert neck.sum() > 0 and neck[:, half(side)].sum() == neck.sum()
    assert line.sum() < 0.05 * SIZE * SIZE  # thin


def test_endotracheal_tube_is_a_midline_line():
    line = diff(Findings(device=Device("tube"))) > 0.2
    cols = np.nonzero(line.any(axis=0))[0]
    assert line.sum() > 0.2 * SIZE and np.all(np.abs(cols - SIZE / 2) < 0.1 * SIZE)


def test_dataset_images_agree_with_their_reports():
    """Through the data set: report sides and heart size predict the image statistics."""
    ds = DemoDataset(300, seed=9)
    gaps: dict[str, list[float]] = {"left": [], "right": []}
    widths: dict[bool, list[int]] = {True: [], False: []}
    rows = slice(int(0.2 * SIZE), int(0.8 * SIZE))
    for i in range(len(ds)):
        pair = ds[i]
        img = pair.image[0].numpy()
        widths[bool(positive(pair.text, "heart"))].append(heart_width(img))
        sides = {s for s in ("left", "right") for t in positive(pair.text, "opacity")
                 if names(t, s)}
        if len(sides) == 1:
            gap = img[rows, half("left")].mean() - img[rows, half("right")].mean()
            gaps[sides.pop()].append(gap)
    assert np.mean(gaps["left"]) > np.mean(gaps["right"]) + 0.01
    assert np.mean(widths[True]) > np.mean(widths[False]) + 3
