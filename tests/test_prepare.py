"""`vlp data prepare`: each adapter on a small replica of its data set's published layout gives
manifests that train; empty sections, missing images and duplicates are counted by reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlp.cli import main
from vlp.data.demo import demo_reports

REPORTS = demo_reports(40)


def picture(path: Path, i: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(i)
    Image.fromarray(rng.integers(0, 255, (36, 40), dtype=np.uint8)).save(path)
    return path


def mimic(src: Path) -> dict[str, int]:
    meta = ["dicom_id,subject_id,study_id,ViewPosition"]
    split = ["dicom_id,study_id,subject_id,split"]
    for i in range(24):
        subject, study = f"1{i:07d}", f"5{i:07d}"
        folder = src / "files" / f"p{subject[:2]}" / f"p{subject}"
        splits = "train" if i < 16 else ("validate" if i < 20 else "test")
        for dicom, view in ((f"d{i:03d}a", "PA"), (f"d{i:03d}b", "LATERAL")):
            meta.append(f"{dicom},{subject},{study},{view}")
            split.append(f"{dicom},{study},{subject},{splits}")
        folder.mkdir(parents=True, exist_ok=True)
        if i < 23:  # one frontal image is missing
            picture(folder / f"s{study}" / f"d{i:03d}a.jpg", i)
        findings = "" if i == 5 else REPORTS[i]
        impression = "" if i == 5 else "No acute process."
        (folder / f"s{study}.txt").write_text(
            f"FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n\n INDICATION: cough\n\n"
            f" FINDINGS:\n {findings}\n\n IMPRESSION: \n {impression}\n")
    meta.append("d000c,10000000,50000000,AP")  # a second frontal image of study 0
    split.append("d000c,50000000,10000000,train")
    (src / "mimic-cxr-2.0.0-metadata.csv").write_text("\n".join(meta) + "\n")
    (src / "mimic-cxr-2.0.0-split.csv").write_text("\n".join(split) + "\n")
    return {"not_frontal": 24, "duplicate_study": 1, "empty_sections": 1, "missing_image": 1}


def iu_xray(src: Path) -> dict[str, int]:
    for i in range(20):
        findings = "" if i == 3 else REPORTS[i]
        images = "".join(f'<parentImage id="CXR{i}_1_IM-{i:04d}-{v}"><figureId>F{v}</figureId>'
                         f'</parentImage>' for v in (1001, 2001))
        (src / "ecgen-radiology").mkdir(parents=True, exist_ok=True)
        (src / "ecgen-radiology" / f"{i}.xml").write_text(
            f'<?xml version="1.0"?><eCitation><uId id="CXR{i}"/><MedlineCitation><Article>'
            f'<Abstract><AbstractText Label="COMPARISON">None.</AbstractText>'
            f'<AbstractText Label="FINDINGS">{findings}</AbstractText>'
            f'<AbstractText Label="IMPRESSION">{"" if i == 3 else "Normal chest."}'
            f'</AbstractText></Abstract></Article></MedlineCitation>{images}</eCitation>')
        for v in (1001, 2001):
            if (i, v) != (7, 2001):
                picture(src / "NLMCXR_png" / f"CXR{i}_1_IM-{i:04d}-{v}.png", i * 10 + v)
    (src / "ecgen-radiology" / "dup.xml").write_text(
        (src / "ecgen-radiology" / "1.xml").read_text())
    return {"empty_sections": 1, "missing_image": 1, "duplicate_study": 1}


def roco(src: Path) -> dict[str, int]:
    n = {"train": 20, "validation": 8, "test": 8}
    k = 0
    for folder, count in n.items():
        base = src / "data" / folder / "radiology"
        lines = []
        for _ in range(count):
            k += 1
            roco_id = f"ROCO_{k:05d}"
            lines.append(f"{roco_id}\t {'' if k == 2 else REPORTS[k % 40]}")
            if k != 3:
                picture(base / "images" / f"{roco_id}.jpg", k)
        (base / "captions.txt").write_text("\n".join(lines) + "\n")
    # eval_size 6: 2 of 8 validation and 2 of 8 test pairs are not sampled
    return {"empty_text": 1, "missing_image": 1, "not_sampled_val": 2, "not_sampled_test": 2}


def medicat(src: Path) -> dict[str, int]:
    lines = []
    for i in range(30):
        pdf = f"{i // 2:040x}"
        uri = f"{i % 2 + 1}-Figure{i % 2 + 1}-1.png"
        lines.append(json.dumps({"pdf_hash": pdf, "fig_uri": uri, "fig_key": "Figure1",
                                 "s2_caption": "" if i == 4 else REPORTS[i], "radiology": True}))
        if i != 9:
            picture(src / "figures" / f"{pdf}_{uri}", i)
    lines.append(lines[0])
    (src / "s2_full_figures_oa_nonroco_combined_medcat_context_v1.jsonl").write_text(
        "\n".join(lines) + "\n")
    return {"empty_text": 1, "missing_image": 1, "duplicate_figure": 1}


def pmc_oa(src: Path) -> dict[str, int]:
    folder = src / "caption_T060_filtered_top4_sep_v0_subfigures"
    for name, count, offset in (("train", 20, 0), ("valid", 6, 20), ("test", 6, 26)):
        lines = []
        for i in range(offset, offset + count):
            image = f"PMC{i}_Fig1_{i}.jpg"
            lines.append(json.dumps({"image": image, "caption": "" if i == 1 else REPORTS[i],
                                     "pmcid": f"PMC{i}", "url_name": f"{i}.jpg"}))
            if i != 2:
                picture(folder / image, i)
        if name == "train":
            lines.append(lines[4])
        (src / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return {"empty_text": 1, "missing_image": 1, "duplicate_image": 1}


REPLICAS = {"mimic_cxr": mimic, "iu_xray": iu_xray, "roco": roco, "medicat": medicat,
            "pmc_oa": pmc_oa}


@pytest.mark.parametrize("kind", sorted(REPLICAS))
def test_prepare_replica_counts_and_trains(kind, write_recipe, tmp_path):
    from vlp.core.recipe import load_recipe
    from vlp.core.trainer import train
    from vlp.eval.evaluate import retrieval_of_run

    src, out = tmp_path / "src", tmp_path / "out"
    expected = REPLICAS[kind](src)
    args = ["data", "prepare", kind, str(src), str(out), "--val-fraction", "0.2",
            "--test-fraction", "0.1", "--eval-size", "6"]
    if kind == "iu_xray":
        args += ["--resize", "24"]  # and a pre-resized copy
    assert main(args) == 0
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["dropped"] == expected
    rows = [json.loads(ln) for ln in (out / "train.jsonl").read_text().splitlines()]
    assert rows and all(r["text"].strip() for r in rows)
    val = (out / "val.jsonl").read_text().splitlines()
    assert report["rows"]["train"] == len(rows) and report["rows"]["val"] == len(val) > 0
    if kind == "iu_xray":
        with Image.open(out / rows[0]["image"]) as im:
            assert min(im.size) == 24 and im.mode.startswith("I")  # 16-bit grey copy
    if kind == "mimic_cxr":
        assert all(r["text"].endswith("No acute process.") for r in rows)
        assert "INDICATION" not in rows[0]["text"] and "cough" not in rows[0]["text"]
    path = write_recipe(f"""
        _base_: tiny_base.yaml
        data: {{_replace_: true, source: manifest, path: {out / 'train.jsonl'},
                val_path: {out / 'val.jsonl'}, id_column: study, image_size: 32}}
        objectives: {{itc: {{weight: 1.0}}}}
        trainer: {{max_steps: 2}}
        eval: {{ks: [1]}}
    """)
    result = train(load_recipe(path), out=tmp_path / "run", evaluate=retrieval_of_run)
    assert result.steps == 2 and result.retrieval["n"] == len(val)


def test_mimic_sections():
    from vlp.data.prepare.mimic_cxr import report_text, sections

    report = ("WET READ: x\n FINAL REPORT\n FINDINGS: Lungs are clear.\n No effusion.\n"
              " IMPRESSION:\n Normal.\n")
    assert sections(report)["findings"] == "Lungs are clear. No effusion."
    assert report_text(report, ("impression",)) == "Normal."
    assert report_text(report, ("findings", "impression")) == ("Lungs are clear. No effusion. "
                                                               "Normal.")
