"""Radiology reports for demo findings: FINDINGS and IMPRESSION sections, varied phrasing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlp.data.demo.findings import Device, Effusion, Findings, Nodule, Opacity, pick

_OPACITY = (
    "{Size} airspace opacity in the {side} {zone} zone.",
    "There is {a_size} opacity projecting over the {side} {zone} lung.",
    "{Size} consolidation in the {side} {zone} lung zone.",
    "The {side} {zone} zone demonstrates {a_size} area of consolidation.",
    "{A_size} focus of airspace opacity is seen in the {side} {zone} zone.",
)
_OPACITY_IMPRESSION = (
    "{Side} {zone} zone opacity, likely pneumonia.",
    "{Size} {side} {zone} consolidation concerning for pneumonia.",
    "Findings suggest {side} {zone} zone pneumonia.",
    "{Side} {zone} airspace disease; follow-up to resolution is recommended.",
)
_OPACITY_SIZE = {"small": ("small", "subtle", "patchy", "faint"),
                 "large": ("large", "extensive", "dense", "confluent")}
_ZONE_WORD = {"upper": ("upper",), "middle": ("mid", "middle"), "lower": ("lower", "basal")}
_HEART = {
    "mild": ("The cardiac silhouette is mildly enlarged.", "Mild cardiomegaly.",
             "Heart size is mildly enlarged.",
             "There is mild enlargement of the cardiac silhouette."),
    "marked": ("The cardiac silhouette is markedly enlarged.", "Marked cardiomegaly.",
               "Severe cardiomegaly.", "Heart size is severely enlarged."),
    "normal": ("Heart size is normal.", "The cardiac silhouette is normal in size.",
               "Normal cardiomediastinal silhouette.",
               "The cardiomediastinal silhouette is within normal limits."),
}
_HEART_IMPRESSION = {
    "mild": ("Mild cardiomegaly.", "Mildly enlarged heart."),
    "marked": ("Marked cardiomegaly.", "Severe cardiomegaly.",
               "Markedly enlarged cardiac silhouette."),
}
_EFFUSION = (
    "{Size} {side} pleural effusion.",
    "There is {a_size} {side}-sided pleural effusion.",
    "{Size} {side} effusion with blunting of the costophrenic angle.",
    "Blunting of the {side} costophrenic angle, consistent with {a_size} effusion.",
)
_EFFUSION_BILATERAL = (
    "{Size} bilateral pleural effusions.",
    "There are {size} bilateral effusions.",
    "Blunting of both costophrenic angles, consistent with {size} bilateral effusions.",
)
_EFFUSION_IMPRESSION = ("{Size} {side} pleural effusion.", "{Side} pleural effusion.")
_EFFUSION_SIZE = {"small": ("small",), "moderate": ("moderate", "moderate-sized")}
_PNEUMOTHORAX = (
    "There is a {side} apical pneumothorax.",
    "{Side} pneumothorax with a visible visceral pleural line.",
    "A {side}-sided pneumothorax is present.",
    "A {side} pneumothorax is seen along the apex and lateral chest wall.",
)
_PNEUMOTHORAX_IMPRESSION = ("{Side} pneumothorax.", "{Side}-sided pneumothorax.",
                            "{Side} pneumothorax, recommend clinical correlation.")
_NODULE = (
    "{mm} mm nodule in the {side} {zone} zone.",
    "There is a {mm}-mm rounded nodular density in the {side} {zone} lung.",
    "A well-circumscribed {side} {zone} zone pulmonary nodule measures {mm} mm.",
)
_NODULE_IMPRESSION = (
    "{Side} pulmonary nodule; CT chest recommended for further characterization.",
    "{mm} mm {side} {zone} zone nodule.",
    "{Side} {zone} lung nodule, nonemergent CT follow-up advised.",
)
_CATHETER = (
    "{Side} internal jugular central venous catheter with tip in the SVC.",
    "{Side}-sided central line terminates in the superior vena cava.",
    "A {side} IJ catheter is present, tip projecting over the SVC.",
)
_CATHETER_IMPRESSION = ("{Side} central venous catheter in satisfactory position.",
                        "{Side} IJ catheter tip in the SVC.")
_TUBE = ("Endotracheal tube in place, tip approximately 4 cm above the carina.",
         "Endotracheal tube terminates above the carina.",
         "The ET tube is in satisfactory position above the carina.")
_TUBE_IMPRESSION = ("Endotracheal tube in appropriate position.", "ET tube in good position.")
_NO_OPACITY = ("No focal consolidation.", "There is no focal airspace opacity.",
               "No consolidation.")
_NO_EFFUSION = ("No pleural effusion.", "There is no pleural effusion.")
_NO_PNEUMOTHORAX = ("No pneumothorax.", "There is no pneumothorax.")
_NO_EFFUSION_OR_PNEUMOTHORAX = ("No pleural effusion or pneumothorax.",
                                "There is no pleural effusion or pneumothorax.")
_CLEAR_LUNGS = ("The lungs are clear.", "Lungs are clear bilaterally.", "Clear lungs.")
_NO_ACUTE = ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
             "No acute findings.", "No radiographic evidence of acute disease.")
_NORMAL_STUDY = ("Normal chest radiograph.", "Normal chest x-ray.")
_FILLER = (
    "The osseous structures are intact.", "Comparison: none.", "No prior studies available.",
    "The visualized upper abdomen is unremarkable.",
    "Mild degenerative changes of the thoracic spine.", "No acute osseous abnormality.",
    "The soft tissues are unremarkable.", "Thoracic spine alignment is normal.",
    "The trachea is midline.", "Mediastinal contours are unremarkable.",
)
_TECHNIQUE = ("Single frontal view of the chest.", "PA and lateral views of the chest.",
              "Portable AP view performed at the bedside.", "Portable technique.")
_INDICATION = ("Cough", "Shortness of breath", "Fever", "Chest pain", "Preoperative evaluation",
               "Follow-up", "Dyspnea", "Hypoxia", "Weakness", "Trauma")


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _fill(rng: np.random.Generator, templates: Sequence[str], **fields: str | int) -> str:
    """One template filled in; ``Name`` fields are capitalised, ``a_name`` get an article."""
    values: dict[str, str] = {}
    for key, value in fields.items():
        text = str(value)
        values[key] = text
        values[key.capitalize()] = text[:1].upper() + text[1:]
        values[f"a_{key}"] = _article(text)
        values[f"A_{key}"] = _article(text).capitalize()
    return pick(rng, templates).format(**values)


def _opacity_sentences(o: Opacity, rng: np.random.Generator) -> tuple[str, str]:
    zone = pick(rng, _ZONE_WORD[o.zone])
    size = pick(rng, _OPACITY_SIZE[o.size])
    return (_fill(rng, _OPACITY, side=o.side, zone=zone, size=size),
            _fill(rng, _OPACITY_IMPRESSION, side=o.side, zone=zone, size=size))


def _effusion_sentences(e: Effusion, rng: np.random.Generator) -> tuple[str, str]:
    size = pick(rng, _EFFUSION_SIZE[e.size])
    templates = _EFFUSION_BILATERAL if e.side == "bilateral" else _EFFUSION
    impression = _fill(rng, _EFFUSION_IMPRESSION, side=e.side, size=size)
    if e.side == "bilateral":
        impression = impression.replace("effusion.", "effusions.")
    return _fill(rng, templates, side=e.side, size=size), impression


def _nodule_sentences(n: Nodule, rng: np.random.Generator) -> tuple[str, str]:
    zone = pick(rng, _ZONE_WORD[n.zone])
    return (_fill(rng, _NODULE, side=n.side, zone=zone, mm=n.mm),
            _fill(rng, _NODULE_IMPRESSION, side=n.side, zone=zone, mm=n.mm))


def _device_sentences(d: Device, rng: np.random.Generator) -> tuple[str, str]:
    if d.kind == "tube":
        return pick(rng, _TUBE), pick(rng, _TUBE_IMPRESSION)
    side = d.side or "right"
    return (_fill(rng, _CATHETER, side=side),
            _fill(rng, _CATHETER_IMPRESSION, side=side))


def _positive_sentences(f: Findings, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(findings sentence, impression sentence) for every finding present."""
    pairs = []
    if f.opacity:
        pairs.append(_opacity_sentences(f.opacity, rng))
    if f.heart != "normal":
        pairs.append((pick(rng, _HEART[f.heart]), pick(rng, _HEART_IMPRESSION[f.heart])))
    if f.effusion:
        pairs.append(_effusion_sentences(f.effusion, rng))
    if f.pneumothorax:
        pairs.append((_fill(rng, _PNEUMOTHORAX, side=f.pneumothorax),
                      _fill(rng, _PNEUMOTHORAX_IMPRESSION, side=f.pneumothorax)))
    if f.nodule:
        pairs.append(_nodule_sentences(f.nodule, rng))
    if f.device:
        pairs.append(_device_sentences(f.device, rng))
    return pairs


def _negative_sentences(f: Findings, rng: np.random.Generator) -> list[str]:
    """Some pertinent negatives; any naming a finding starts with "No" or "There is no"."""
    out = []
    if f.heart == "normal" and rng.random() < 0.6:
        out.append(pick(rng, _HEART["normal"]))
    clear = f.opacity is None and f.nodule is None and f.effusion is None and not f.pneumothorax
    if clear and rng.random() < 0.7:
        out.append(pick(rng, _CLEAR_LUNGS))
    if f.opacity is None and rng.random() < 0.5:
        out.append(pick(rng, _NO_OPACITY))
    if f.effusion is None and f.pneumothorax is None and rng.random() < 0.5:
        out.append(pick(rng, _NO_EFFUSION_OR_PNEUMOTHORAX))
    else:
        if f.effusion is None and rng.random() < 0.5:
            out.append(pick(rng, _NO_EFFUSION))
        if f.pneumothorax is None and rng.random() < 0.5:
            out.append(pick(rng, _NO_PNEUMOTHORAX))
    return out


def _filler_sentences(rng: np.random.Generator) -> list[str]:
    """Zero to four image-irrelevant sentences, so that reports vary beyond the findings."""
    count = int(rng.integers(4))
    filler = [_FILLER[i] for i in rng.choice(len(_FILLER), size=count, replace=False)]
    return [*filler, pick(rng, _TECHNIQUE)] if rng.random() < 0.4 else filler


def _impression(f: Findings, positives: list[str], rng: np.random.Generator) -> list[str]:
    if f.is_normal:
        return [pick(rng, _NO_ACUTE + _NORMAL_STUDY)]
    if f == Findings(device=f.device):
        return [*positives, pick(rng, _NO_ACUTE)]
    return positives


def write_report(findings: Findings, rng: np.random.Generator) -> str:
    """A FINDINGS + IMPRESSION report for ``findings``; phrasing and sentence order vary."""
    pairs = _positive_sentences(findings, rng)
    body = [p[0] for p in pairs] + _negative_sentences(findings, rng) + _filler_sentences(rng)
    rng.shuffle(body)
    impression = [p[1] for p in pairs]
    rng.shuffle(impression)
    impression = _impression(findings, impression, rng)
    indication = f"INDICATION: {pick(rng, _INDICATION)}. " if rng.random() < 0.5 else ""
    return f"{indication}FINDINGS: {' '.join(body)} IMPRESSION: {' '.join(impression)}"
