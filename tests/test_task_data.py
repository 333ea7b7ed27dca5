"""Task data readers: classification manifests (CheXpert -1 policies, label layouts), the
VQA-RAD and SLAKE JSON layouts on small replicas, and bad rows counted by reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from vlp.data.demo_tasks import FINDING_LABELS, demo_questions, finding_labels, task_split
from vlp.tasks.data import (
    DemoClassData,
    DemoVQAData,
    ManifestClassData,
    ManifestVQAData,
    class_splits,
    vqa_splits,
)


def _images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (20, 20), color=10 * i).save(folder / name)


CHEXPERT = """Path,Effusion,Edema
a.png,1,0
b.png,-1,1.0
c.png,,-1
d.png,0,yes
missing.png,1,1
e.png,0
"""


@pytest.mark.parametrize("policy,b_effusion,c_edema", [
    ("ignore", np.nan, np.nan), ("positive", 1.0, 1.0), ("negative", 0.0, 0.0)])
def test_chexpert_uncertain_policy_and_bad_rows(tmp_path, policy, b_effusion, c_edema):
    _images(tmp_path, ["a.png", "b.png", "c.png", "d.png", "e.png"])
    (tmp_path / "test.csv").write_text(CHEXPERT)
    data = ManifestClassData(source="manifest", test=str(tmp_path / "test.csv"),
                             image_column="Path", label_columns=["Effusion", "Edema"],
                             uncertain=policy)
    split = class_splits(data, ("test",), 16, 1)["test"]
    assert split.multi_label and split.classes == ["Effusion", "Edema"]
    np.testing.assert_array_equal(split.labels, [[1, 0], [b_effusion, 1], [0, c_edema]])
    assert split.ids == ["test.csv:1", "test.csv:2", "test.csv:3"]  # blank = not mentioned = 0
    bad = split.bad.to_dict()
    assert bad["skipped_rows"] == {"bad_label": 1, "missing_image": 1, "malformed_row": 1}
    assert [r[1:] for r in bad["bad_rows"]] == [[4, "bad_label"], [5, "missing_image"],
                                                [6, "malformed_row"]]
    assert split.images[0].image.shape == (1, 16, 16)


def test_labels_column_multi_and_single_label(tmp_path):
    _images(tmp_path, ["a.png", "b.png", "c.png"])
    rows = [{"image": "a.png", "findings": "effusion|nodule", "dx": "pneumonia"},
            {"image": "b.png", "findings": "", "dx": "normal"},
            {"image": "c.png", "findings": "fracture", "dx": "flu"}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    multi = ManifestClassData(source="manifest", test=str(tmp_path / "t.jsonl"),
                              labels_column="findings", separator="|",
                              classes=["effusion", "nodule"])
    split = class_splits(multi, ("test",), 16, 1)["test"]
    np.testing.assert_array_equal(split.labels, [[1, 1], [0, 0]])
    assert split.bad.counts == {"unknown_label": 1}
    single = ManifestClassData(source="manifest", test=str(tmp_path / "t.jsonl"),
                               labels_column="dx", classes=["normal", "pneumonia"])
    split = class_splits(single, ("test",), 16, 1)["test"]
    assert not split.multi_label and split.labels.tolist() == [1, 0]
    assert split.bad.counts == {"unknown_label": 1}


def test_validation_split_is_drawn_from_train_when_absent(tmp_path):
    _images(tmp_path, [f"{i}.png" for i in range(20)])
    (tmp_path / "train.csv").write_text("image,y\n" + "".join(f"{i}.png,{i % 2}\n"
                                                              for i in range(20)))
    data = ManifestClassData(source="manifest", train=str(tmp_path / "train.csv"),
                             test=str(tmp_path / "train.csv"), label_columns=["y"],
                             val_fraction=0.25)
    splits = class_splits(data, ("train", "val", "test"), 16, 1)
    assert len(splits["train"].ids) == 15 and len(splits["val"].ids) == 5
    assert not set(splits["train"].ids) & set(splits["val"].ids)
    assert splits["train"].key != splits["val"].key != splits["test"].key


@pytest.mark.parametrize("fields,message", [
    ({"test": "nowhere.csv", "label_columns": ["a"]}, "path does not exist: nowhere.csv"),
    ({"label_columns": ["a"], "labels_column": "b"}, "exactly one of label_columns"),
    ({"labels_column": "b"}, "labels_column needs `classes`"),
])
def test_bad_classification_configs(tmp_path, fields, message):
    (tmp_path / "t.csv").write_text("image,a\n")
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        ManifestClassData.model_validate({"source": "manifest", "test": str(tmp_path / "t.csv"),
                                          **fields})


def test_missing_column_names_the_file_and_the_columns(tmp_path):
    from vlp.data.sample import DataError

    (tmp_path / "t.csv").write_text("img,a\nx.png,1\n")
    data = ManifestClassData(source="manifest", test=str(tmp_path / "t.csv"),
                             label_columns=["a"])
    with pytest.raises(DataError, match=r"t\.csv: missing column\(s\) 'image'; columns found: "
                                        r"'img', 'a'"):
        class_splits(data, ("test",), 16, 1)


# VQA-RAD: one public JSON list; test rows have phrase_type test_freeform / test_para.
VQA_RAD = [
    {"qid": 1, "image_name": "synpic1.jpg", "question": "Is there a fracture?", "answer": "Yes",
     "answer_type": "CLOSED", "phrase_type": "freeform", "question_type": "PRES"},
    {"qid": 2, "image_name": "synpic1.jpg", "question": "Where is the mass?",
     "answer": " Left  lung", "answer_type": "OPEN", "phrase_type": "para"},
    {"qid": 3, "image_name": "synpic2.jpg", "question": "Is this an MRI?", "answer": "no",
     "answer_type": "CLOSED", "phrase_type": "test_freeform"},
    {"qid": 4, "image_name": "synpic2.jpg", "question": "How many lesions?", "answer": 2,
     "answer_type": "OPEN", "phrase_type": "test_para"},
    {"qid": 5, "image_name": "missing.jpg", "question": "Is it normal?", "answer": "yes",
     "answer_type": "CLOSED", "phrase_type": "freeform"},
    {"qid": 6, "image_name": "synpic1.jpg", "question": "Is it?", "answer": "",
     "answer_type": "CLOSED", "phrase_type": "freeform"},
    {"qid": 7, "image_name": "synpic1.jpg", "question": "What?", "answer": "x",
     "answer_type": "OTHER", "phrase_type": "test_freeform"},
    "not an object",
]


def test_vqa_rad_layout_splits_by_phrase_type_and_counts_bad_rows(tmp_path):
    _images(tmp_path / "images", ["synpic1.jpg", "synpic2.jpg"])
    path = tmp_path / "VQA_RAD Dataset Public.json"
    path.write_text(json.dumps(VQA_RAD))
    data = ManifestVQAData(source="manifest", layout="vqa_rad", train=str(path),
                           image_root=str(tmp_path / "images"))
    train, test = vqa_splits(data, 16, 1)
    assert [(s.sample_id, s.answer, s.answer_type) for s in train.samples] == [
        ("1", "yes", "closed"), ("2", "left lung", "open")]
    assert [(s.sample_id, s.question, s.answer) for s in test.samples] == [
        ("3", "Is this an MRI?", "no"), ("4", "How many lesions?", "2")]
    assert train.bad.counts == {"missing_image": 1, "empty_answer": 1, "malformed_row": 1}
    assert test.bad.counts == {"bad_answer_type": 1, "malformed_row": 1}
    pair = test.images[1]
    assert pair.text == "How many lesions?" and pair.image.shape == (1, 16, 16)


def test_slake_layout_keeps_one_language_and_reads_imgs_folder(tmp_path):
    _images(tmp_path / "imgs", ["xmlab1/source.jpg", "xmlab2/source.jpg"])
    def q(qid, img, lang, answer, kind="CLOSED"):
        return {"img_id": 1, "img_name": img, "question": f"Q{qid}?", "answer": answer,
                "q_lang": lang, "answer_type": kind, "qid": qid, "modality": "CT"}
    (tmp_path / "train.json").write_text(json.dumps([
        q(1, "xmlab1/source.jpg", "en", "Yes"), q(2, "xmlab1/source.jpg", "zh", "是"),
        q(3, "xmlab2/source.jpg", "en", "Liver", "OPEN")]))
    (tmp_path / "test.json").write_text(json.dumps([q(4, "xmlab9/source.jpg", "en", "No")]))
    data = ManifestVQAData(source="manifest", layout="slake", train=str(tmp_path / "train.json"),
                           test=str(tmp_path / "test.json"))
    train, test = vqa_splits(data, 16, 1)
    assert [(s.answer, s.answer_type) for s in train.samples] == [("yes", "closed"),
                                                                   ("liver", "open")]
    assert train.filtered == 1 and not train.bad.counts
    assert test.samples == [] and test.bad.rows == [(str(tmp_path / "test.json"), 1,
                                                     "missing_image")]


def test_vqa_table_layout(tmp_path):
    _images(tmp_path, ["a.png"])
    (tmp_path / "qa.csv").write_text("image,question,answer,answer_type\n"
                                     "a.png,Is there an effusion?,yes,closed\n"
                                     "a.png,,no,closed\n")
    data = ManifestVQAData(source="manifest", train=str(tmp_path / "qa.csv"),
                           test=str(tmp_path / "qa.csv"))
    train, _ = vqa_splits(data, 16, 1)
    assert len(train.samples) == 1 and train.bad.rows[0][1:] == (2, "empty_question")
    with pytest.raises(ValidationError, match="`test` is required"):
        ManifestVQAData(source="manifest", train=str(tmp_path / "qa.csv"))


def test_demo_tasks_follow_the_generated_findings():
    studies = task_split("test", 50, 32, seed=0)
    assert studies.offset > 10**9  # far from any pre-training split
    split = class_splits(DemoClassData(test_size=50), ("test",), 32, 1)["test"]
    for i in range(50):
        labels = finding_labels(studies.findings(i))
        assert tuple(split.labels[i]) == labels
        assert labels[FINDING_LABELS.index("normal")] == int(studies.findings(i).is_normal)
        questions = demo_questions(studies.findings(i), 0, studies.offset + i)
        assert [q.answer for q in questions[:2]] == ["yes", "no"]
        assert questions[2].answer_type == "open"
    f = studies.findings(next(i for i in range(50) if studies.findings(i).effusion))
    opens = {q.question: q.answer for q in
             [demo_questions(f, 0, k)[2] for k in range(200)]}
    assert opens.get("Which side is the effusion on?") == f.effusion.side
    train, test = vqa_splits(DemoVQAData(train_size=4, test_size=2), 32, 1)
    assert len(train.samples) == 12 and len(test.samples) == 6
    assert train.images[0].text == train.samples[0].question
