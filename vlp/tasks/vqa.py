"""VQA as answer classification: a head on the fused image-question features (M3AE style)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from vlp.core.step import Step
from vlp.data.sample import DataError
from vlp.eval.metrics import Metric, accuracy, majority
from vlp.plugins import PluginError
from vlp.plugins import load as load_plugin
from vlp.plugins.base import Params
from vlp.tasks.base import Task, TaskContext, TaskResult, batches, trainable_copy
from vlp.tasks.data import DemoVQAData, VQAData, VQASample, merged_bad_rows, vqa_splits


class AnswerHead(nn.Sequential):
    """Linear-LayerNorm-GELU-Linear over [pooled fused text ; pooled fused image] (M3AE)."""

    def __init__(self, width: int, num_answers: int):
        super().__init__(nn.Linear(2 * width, 2 * width), nn.LayerNorm(2 * width), nn.GELU(),
                         nn.Linear(2 * width, num_answers))


def answer_targets(answers: list[str], vocabulary: dict[str, int]) -> Tensor:
    """(N, A) soft answer scores: 1 for the sample's answer (one annotator per question)."""
    target = torch.zeros(len(answers), len(vocabulary))
    for i, answer in enumerate(answers):
        target[i, vocabulary[answer]] = 1.0
    return target


def vqa_accuracies(samples: list[VQASample], predicted: list[str]) -> dict[str, float | None]:
    """Overall, closed and open accuracy (percent; None where a type has no question)."""
    out: dict[str, float | None] = {}
    for kind in ("overall", "closed", "open"):
        rows = [i for i, s in enumerate(samples) if kind == "overall" or s.answer_type == kind]
        out[kind] = (accuracy([samples[i].answer for i in rows], [predicted[i] for i in rows])
                     if rows else None)
    return out


def _baselines(train: list[VQASample], test: list[VQASample]) -> dict[str, dict]:
    """Majority-answer baselines, and the stronger per-question prior (most frequent training
    answer of the same question text), which needs no image at all."""
    overall = majority([s.answer for s in train])
    by_type = {k: majority([s.answer for s in train if s.answer_type == k] or [overall])
               for k in ("closed", "open")}
    per_question: dict[str, Counter] = defaultdict(Counter)
    for s in train:
        per_question[s.question.lower()][s.answer] += 1
    prior = [per_question[s.question.lower()].most_common(1)[0][0]
             if s.question.lower() in per_question else overall for s in test]
    majority_acc = vqa_accuracies(test, [overall] * len(test))
    for kind in ("closed", "open"):
        typed = vqa_accuracies(test, [by_type[kind]] * len(test))
        majority_acc[kind] = typed[kind]
    return {"majority": majority_acc, "question_prior": vqa_accuracies(test, prior),
            "majority_answers": {"overall": overall, **by_type}}


class VQA(Task):
    """VQA answer classification fine-tuned through the fusion module; open/closed accuracy."""

    class Params(Params):
        data: VQAData = DemoVQAData()
        """VQA data: the demo questions, a table, or VQA-RAD / SLAKE JSON (demo | manifest)."""
        steps: int = Field(300, gt=0)
        """Fine-tuning steps through the fusion module and the answer head."""
        batch_size: int = Field(32, gt=0)
        """Questions per step."""
        lr: float = Field(1e-4, gt=0)  # encoders and fusion
        """AdamW learning rate of the encoders and the fusion module."""
        head_lr_mult: float = Field(10.0, gt=0)  # the freshly initialised head learns faster
        """Learning-rate multiplier of the freshly initialised answer head."""
        weight_decay: float = Field(0.01, ge=0)
        """AdamW weight decay."""
        # built fresh (not pre-trained) only when the recipe's model has no fusion module
        fusion: dict[str, Any] = {"name": "cross_attention", "layers": 1, "heads": 2}
        """Fusion plugin built fresh only when the recipe's model has none (e.g. clip)."""
        seed: int = 0
        """Seed of the head initialisation and the batch order."""

        @field_validator("fusion")
        @classmethod
        def _fusion_plugin(cls, value: dict[str, Any]) -> dict[str, Any]:
            rest = {k: v for k, v in value.items() if k != "name"}
            try:
                load_plugin("fusion", str(value.get("name"))).Params.model_validate(rest)
            except PluginError as exc:
                raise ValueError(str(exc)) from None
            return value

    def _model(self, ctx: TaskContext):
        clone = trainable_copy(ctx.model)
        if clone.fusion is None:
            spec = self.params.fusion
            cls = load_plugin("fusion", spec["name"])
            params = cls.Params.model_validate({k: v for k, v in spec.items() if k != "name"})
            clone.fusion = cls(params, clone.image_encoder.width,
                               clone.text_encoder.width).to(ctx.device)
        return clone

    def run(self, ctx: TaskContext) -> TaskResult:
        p = self.params
        train, test = vqa_splits(p.data, ctx.image_size, ctx.channels, ctx.seed)
        if not train.samples or not test.samples:
            raise DataError(f"VQA task '{self.name}': no usable training or test questions")
        counts = Counter(s.answer for s in train.samples)
        vocabulary = {a: i for i, (a, _) in enumerate(counts.most_common())}
        answers = list(vocabulary)
        targets = answer_targets([s.answer for s in train.samples], vocabulary).to(ctx.device)
        torch.manual_seed(p.seed)
        clone = self._model(ctx)
        head = AnswerHead(clone.fusion.width, len(vocabulary)).to(ctx.device)
        step_gen = torch.Generator(ctx.device).manual_seed(p.seed)

        passes: Counter[str] = Counter()

        def logits(batch) -> Tensor:  # through the model's encoders and fusion, with gradients
            step = Step(clone, batch, step_gen)
            fused = step.fused("image", "text")
            passes.update(step.passes)
            pooled = torch.cat([fused.text[:, 0], fused.image.mean(1)], dim=-1)
            return head(pooled.float())

        optimizer = torch.optim.AdamW(
            [{"params": list(clone.parameters()), "lr": p.lr},
             {"params": list(head.parameters()), "lr": p.lr * p.head_lr_mult}],
            weight_decay=p.weight_decay)
        generator = torch.Generator().manual_seed(p.seed)
        clone.train()
        head.train()
        losses, done = [], 0
        while done < p.steps:
            order = torch.randperm(len(train.samples), generator=generator)
            for batch, rows in batches(train.images, order, p.batch_size, ctx.collate,
                                       ctx.device):
                loss = F.binary_cross_entropy_with_logits(logits(batch), targets[rows],
                                                          reduction="sum") / len(rows)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.detach())
                done += 1
                if done >= p.steps:
                    break
        clone.eval()
        head.eval()
        with torch.no_grad():
            order = torch.arange(len(test.samples))
            best = torch.cat([logits(b).argmax(-1).cpu() for b, _ in
                              batches(test.images, order, p.batch_size, ctx.collate,
                                      ctx.device)])
        predicted = [answers[int(i)] for i in best]
        accs = vqa_accuracies(test.samples, predicted)
        base = _baselines(train.samples, test.samples)
        metrics = {f"{kind}_accuracy": Metric(float("nan") if v is None else v,
                                             base["majority"][kind], "majority")
                   for kind, v in accs.items()}
        rows = [{"id": s.sample_id, "question": s.question, "answer_type": s.answer_type,
                 "truth": s.answer, "prediction": pred}
                for s, pred in zip(test.samples, predicted)]
        curve = torch.stack(losses).tolist()
        return TaskResult(metrics, len(test.samples), rows, {
            **merged_bad_rows([train, test]).to_dict(),
            "filtered_other_language": train.filtered + test.filtered,
            "answers": len(vocabulary),
            "test_out_of_vocabulary": sum(s.answer not in vocabulary for s in test.samples),
            "question_prior_accuracy": base["question_prior"],
            "majority_answers": base["majority_answers"],
            "fusion": "pre-trained" if ctx.model.fusion is not None else
                      f"fresh {p.fusion['name']} (the recipe's model has none)",
            "train_loss": {"first": curve[0], "last": curve[-1]},
            "training_passes": dict(sorted(passes.items()))})
