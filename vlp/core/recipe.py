"""Recipes: YAML validated by pydantic, then by each plugin's own Params, before anything is built.

Errors name the file (and line), the dotted key and the reason, all problems at once.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlp.core.errors import Problem, RecipeError, TaskFileError
from vlp.core.yamlio import Provenance, apply_override, load_with_bases, where_of
from vlp.plugins import PluginError
from vlp.plugins import load as load_plugin
from vlp.plugins.base import Params

BUILTIN_VIEWS = ("image", "text")  # the full image and the full report, always defined


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PluginSpec(BaseModel):
    """`{name: plugin, ...params}`; the params are validated by the plugin's own model."""

    model_config = ConfigDict(extra="allow")
    name: str


class ViewSpec(BaseModel):
    """`{masker: plugin, ...params}`: a view derived from the batch once per step."""

    model_config = ConfigDict(extra="allow")
    masker: str


class ObjectiveSpec(BaseModel):
    """`{weight: w, use: plugin?, ...params}`; the key names the plugin unless `use` does."""

    model_config = ConfigDict(extra="allow")
    weight: float = Field(ge=0, allow_inf_nan=False)
    use: str | None = None


class TokenizerSpec(_Strict):
    path: str | None = None  # a tokenizer.json to load; otherwise one is trained on the reports
    kind: Literal["bpe", "wordpiece"] = "bpe"
    vocab_size: int = Field(4000, ge=64)
    min_frequency: int = Field(2, ge=1)
    lowercase: bool = True


class ModelSpec(_Strict):
    image_encoder: PluginSpec
    text_encoder: PluginSpec
    fusion: PluginSpec | None = None
    embed_dim: int = Field(256, gt=0)
    tokenizer: TokenizerSpec = TokenizerSpec()


class _DataCommon(_Strict):
    image_size: int = Field(224, ge=16)
    channels: Literal[1, 3] = 1
    max_text_len: int = Field(128, ge=8)
    num_workers: int = Field(0, ge=0)
    seed: int = 0  # demo generation / held-out split


class DemoData(_DataCommon):
    source: Literal["demo"]
    train_size: int = Field(4000, ge=2)
    val_size: int = Field(500, ge=2)


class ManifestData(_DataCommon):
    source: Literal["manifest"]
    path: str
    image_root: str | None = None
    image_column: str = "image"
    text_column: str = "text"
    id_column: str | None = None
    format: Literal["csv", "tsv", "jsonl"] | None = None
    val_path: str | None = None
    val_fraction: float = Field(0.05, gt=0, lt=1)
    strict: bool = False


class OptimSpec(_Strict):
    name: Literal["adamw"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-6, gt=0)


class ScheduleSpec(_Strict):
    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class TrainerSpec(_Strict):
    max_steps: int = Field(gt=0)
    batch_size: int = Field(gt=0)  # global batch: all ranks and accumulation steps together
    grad_accum: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    grad_clip: float = Field(1.0, ge=0)  # 0 disables clipping
    log_every: int = Field(10, gt=0)
    ckpt_every: int = Field(0, ge=0)  # 0: only at the end
    keep_checkpoints: int = Field(2, ge=1)
    device: str = "auto"
    find_unused_parameters: bool = False
    tensorboard: bool = False  # also log to <run>/tensorboard (needs the tensorboard extra)


class TaskSpec(BaseModel):
    """`{use: plugin?, ...params}`; the key names the task plugin unless `use` does."""

    model_config = ConfigDict(extra="allow")
    use: str | None = None


class EvalSpec(_Strict):
    """The `eval:` section of a recipe, or a task file on its own (`vlp eval --tasks`)."""

    batch_size: int = Field(256, gt=0)  # frozen-feature passes
    ks: tuple[Annotated[int, Field(ge=1)], ...] = (1, 5, 10)  # retrieval recall cut-offs
    tasks: dict[str, TaskSpec] = {"retrieval": TaskSpec()}  # run in order after training


class RecipeSpec(_Strict):
    seed: int = 0
    data: Annotated[DemoData | ManifestData, Field(discriminator="source")]
    model: ModelSpec
    views: dict[str, ViewSpec] = {}
    objectives: dict[str, ObjectiveSpec]
    optim: OptimSpec = OptimSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    trainer: TrainerSpec
    eval: EvalSpec = EvalSpec()


@dataclass(frozen=True)
class Resolved:
    """A recipe entry bound to its plugin class and validated parameters."""

    key: str  # dotted key in the recipe, for messages
    plugin: str
    cls: type
    params: Params
    weight: float = 1.0


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: the core spec plus every plugin resolved and its params checked."""

    source: str
    spec: RecipeSpec
    image_encoder: Resolved
    text_encoder: Resolved
    fusion: Resolved | None
    views: dict[str, Resolved]
    objectives: dict[str, Resolved]  # only those with weight > 0
    tasks: dict[str, Resolved] = field(default_factory=dict)  # downstream tasks of `eval:`

    @property
    def name(self) -> str:
        return Path(self.source).stem

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved recipe (defaults filled in), loadable again as a recipe."""
        out = self.spec.model_dump(mode="json", exclude={"views", "objectives", "model"})
        model = self.spec.model.model_dump(mode="json", exclude={"image_encoder", "text_encoder",
                                                                  "fusion"})
        for field_name in ("image_encoder", "text_encoder", "fusion"):
            r = getattr(self, field_name)
            model[field_name] = None if r is None else {"name": r.plugin, **_dump(r.params)}
        out["model"] = model
        out["views"] = {n: {"masker": r.plugin, **_dump(r.params)} for n, r in self.views.items()}
        out["objectives"] = {}
        for name, spec in self.spec.objectives.items():
            r = self.objectives.get(name)
            entry = {"weight": spec.weight, **({"use": spec.use} if spec.use else {})}
            entry.update(_dump(r.params) if r else (spec.model_extra or {}))
            out["objectives"][name] = entry
        out["eval"]["tasks"] = tasks_to_dict(self.spec.eval, self.tasks)
        return out


def tasks_to_dict(spec: EvalSpec, tasks: dict[str, Resolved]) -> dict[str, Any]:
    """Resolved task entries (defaults filled in), loadable again."""
    return {name: {**({"use": spec.tasks[name].use} if spec.tasks[name].use else {}),
                   **_dump(r.params)} for name, r in tasks.items()}


def _dump(params: Params) -> dict[str, Any]:
    return params.model_dump(mode="json")


def _describe(err: dict[str, Any], allowed: list[str] | None) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
        return "unknown key" + hint
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        ctx = err["ctx"]
        return f"unknown value {ctx['tag']!r}; expected one of: {ctx['expected_tags']}"
    given = err.get("input")
    shown = "" if isinstance(given, (dict, list)) else f" (got {given!r})"
    return f"{err['msg']}{shown}"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """Allowed keys of the pydantic model reached by `loc` (for 'unknown key' hints)."""
    cls: Any = model
    for part in loc[:-1]:
        fields = getattr(cls, "model_fields", None)
        if fields is None or part not in fields:
            return None
        ann = fields[part].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            cls = ann
        else:
            args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type)
                    and issubclass(a, BaseModel)]
            if len(args) != 1:
                return None
            cls = args[0]
    return sorted(getattr(cls, "model_fields", {})) or None


def _problems(exc: ValidationError, prefix: str, prov: Provenance, source: str,
              model: type[BaseModel], extra_allowed: tuple[str, ...] = ()) -> list[Problem]:
    out = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        # discriminated unions put the tag in the loc; drop it for the user
        loc = tuple(p for p in loc if p not in ("demo", "manifest"))
        key = ".".join(p for p in (prefix, *loc) if p)
        allowed = _fields_at(model, loc)
        if allowed is not None:
            allowed = sorted({*allowed, *extra_allowed})
        out.append(Problem(where_of(prov, key, source), key, _describe(err, allowed)))
    return out


def _resolve(kind: str, key: str, plugin: str, raw: dict[str, Any], prov: Provenance,
             source: str, name_key: str, core_keys: tuple[str, ...],
             problems: list[Problem], weight: float = 1.0) -> Resolved | None:
    try:
        cls = load_plugin(kind, plugin)
    except PluginError as exc:
        k = f"{key}.{name_key}" if name_key else key
        problems.append(Problem(where_of(prov, k, source), k, str(exc)))
        return None
    try:
        params = cls.Params.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_problems(exc, key, prov, source, cls.Params, core_keys))
        return None
    return Resolved(key, plugin, cls, params, weight)


def _check_view(key: str, view: str, modality: str, views: dict[str, ViewSpec],
                resolved: dict[str, Resolved], prov: Provenance, source: str,
                problems: list[Problem], masked: bool = False) -> None:
    produces = {n: r.cls.produces for n, r in resolved.items()}
    if masked and (view in BUILTIN_VIEWS or (view in resolved
                                              and modality not in resolved[view].cls.masks)):
        kind = "built-in, unmasked" if view in BUILTIN_VIEWS else \
            f"made by '{views[view].masker}', which masks no {modality}"
        problems.append(Problem(where_of(prov, key, source), key,
                                f"needs a masked {modality} view; '{view}' is {kind}"))
        return
    if view == modality:
        return
    if view in BUILTIN_VIEWS or view not in views:
        defined = sorted({modality, *(n for n, p in produces.items() if modality in p)})
        problems.append(Problem(where_of(prov, key, source), key,
                                f"undefined {modality} view '{view}' (defined: "
                                f"{', '.join(defined)}; add it under 'views:')"))
    elif view in produces and modality not in produces[view]:
        problems.append(Problem(where_of(prov, key, source), key,
                                f"view '{view}' has no {modality} part (its masker "
                                f"'{views[view].masker}' makes "
                                f"{', '.join(sorted(produces[view]))})"))


def validate(data: Any, prov: Provenance, source: str) -> Recipe:
    """Check a merged recipe mapping; raise RecipeError listing every problem found."""
    if not isinstance(data, dict):
        raise RecipeError([Problem(source, "", "a recipe must be a mapping")])
    try:
        spec = RecipeSpec.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_problems(exc, "", prov, source, RecipeSpec)) from None

    problems: list[Problem] = []

    def plugin(kind: str, key: str, ps: PluginSpec | None) -> Resolved | None:
        if ps is None:
            return None
        return _resolve(kind, key, ps.name, ps.model_extra or {}, prov, source, "name",
                        ("name",), problems)

    image_encoder = plugin("image_encoder", "model.image_encoder", spec.model.image_encoder)
    text_encoder = plugin("text_encoder", "model.text_encoder", spec.model.text_encoder)
    fusion = plugin("fusion", "model.fusion", spec.model.fusion)

    views: dict[str, Resolved] = {}
    for name, vs in spec.views.items():
        key = f"views.{name}"
        if name in BUILTIN_VIEWS:
            problems.append(Problem(where_of(prov, key, source), key,
                                    f"'{name}' is a built-in view and cannot be redefined"))
            continue
        r = _resolve("masker", key, vs.masker, vs.model_extra or {}, prov, source, "masker",
                     ("masker",), problems)
        if r is not None:
            views[name] = r

    objectives: dict[str, Resolved] = {}
    for name, os_ in spec.objectives.items():
        key = f"objectives.{name}"
        if os_.weight == 0:  # off: not built, and nothing only it needed is computed
            continue
        r = _resolve("objective", key, os_.use or name, os_.model_extra or {}, prov, source,
                     "use" if os_.use else "", ("use", "weight"), problems, os_.weight)
        if r is None:
            continue
        objectives[name] = r
        needs = r.cls.needs(r.params)
        for modality, named in (("image", needs.image_views), ("text", needs.text_views)):
            for param, view in named.items():
                _check_view(f"{key}.{param}", view, modality, spec.views, views, prov, source,
                            problems, masked=param in needs.masked)
        if needs.fusion and spec.model.fusion is None:
            problems.append(Problem(where_of(prov, key, source), key,
                                    "reads fused image-text features but the recipe has no "
                                    "'model.fusion' (e.g. {name: cross_attention})"))
        if r.cls.batch_coupled and spec.trainer.grad_accum > 1:
            problems.append(Problem(
                where_of(prov, "trainer.grad_accum", source), "trainer.grad_accum",
                f"objective '{name}' compares samples within the batch (negatives), so "
                "accumulating micro-batches would shrink its batch; use grad_accum: 1 and a "
                "smaller batch_size or more ranks"))
    tasks = resolve_tasks(spec.eval, "eval.tasks", prov, source, problems)
    if not objectives and not problems:
        problems.append(Problem(where_of(prov, "objectives", source), "objectives",
                                "no objective has a weight above 0"))

    data_spec = spec.data
    if isinstance(data_spec, ManifestData):
        for field_name in ("path", "val_path", "image_root"):
            value = getattr(data_spec, field_name)
            if value is not None and not Path(value).exists():
                key = f"data.{field_name}"
                problems.append(Problem(where_of(prov, key, source), key,
                                        f"path does not exist: {value}"))
    if isinstance(data_spec, DemoData):
        for key, size, need in (("data.train_size", data_spec.train_size, spec.trainer.batch_size),
                                ("data.val_size", data_spec.val_size, max(spec.eval.ks))):
            if size < need:
                what = "trainer.batch_size" if key.endswith("train_size") else "max(eval.ks)"
                problems.append(Problem(where_of(prov, key, source), key,
                                        f"{size} is smaller than {what} ({need})"))
    if spec.trainer.tensorboard and importlib.util.find_spec("tensorboard") is None:
        problems.append(Problem(where_of(prov, "trainer.tensorboard", source),
                                "trainer.tensorboard", "tensorboard is not installed: "
                                "pip install -e '.[tensorboard]'"))
    if spec.trainer.batch_size % spec.trainer.grad_accum:
        problems.append(Problem(where_of(prov, "trainer.batch_size", source),
                                "trainer.batch_size", "must be divisible by trainer.grad_accum"))
    if problems:
        raise RecipeError(problems)
    assert image_encoder is not None and text_encoder is not None
    return Recipe(source, spec, image_encoder, text_encoder, fusion, views, objectives, tasks)


def resolve_tasks(spec: EvalSpec, prefix: str, prov: Provenance, source: str,
                  problems: list[Problem]) -> dict[str, Resolved]:
    """Bind each task entry to its plugin and validate its Params (problems appended)."""
    tasks: dict[str, Resolved] = {}
    for name, ts in spec.tasks.items():
        key = f"{prefix}.{name}" if prefix else name
        r = _resolve("task", key, ts.use or name, ts.model_extra or {}, prov, source,
                     "use" if ts.use else "", ("use",), problems)
        if r is not None:
            tasks[name] = r
    return tasks


def load_task_file(path: str | Path) -> tuple[EvalSpec, dict[str, Resolved]]:
    """Read and validate a task file: an `eval:` section on its own (`tasks:`, `batch_size:`)."""
    source = str(path)
    try:
        data, prov = load_with_bases(Path(path))
    except RecipeError as exc:  # not YAML, not a mapping, missing
        raise TaskFileError(exc.problems) from None
    try:
        spec = EvalSpec.model_validate(data)
    except ValidationError as exc:
        raise TaskFileError(_problems(exc, "", prov, source, EvalSpec)) from None
    problems: list[Problem] = []
    tasks = resolve_tasks(spec, "tasks", prov, source, problems)
    if problems:
        raise TaskFileError(problems)
    return spec, tasks


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, merge (`_base_`), override (`--set`) and validate a recipe file."""
    data, prov = load_with_bases(Path(path))
    for assignment in overrides:
        apply_override(data, prov, assignment)
    return validate(data, prov, str(path))
