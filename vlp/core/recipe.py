"""Recipes: YAML validated by pydantic, then by each plugin's own Params, before anything is built.

Errors name the file (and line), the dotted key and the reason, all problems at once.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from vlp.core.errors import Problem, RecipeError, TaskFileError
from vlp.core.yamlio import Provenance, apply_override, load_with_bases, where_of
from vlp.plugins import PluginError
from vlp.plugins import load as load_plugin
from vlp.plugins.base import Params

BUILTIN_VIEWS = ("image", "text")  # the full image and the full report, always defined


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PluginSpec(BaseModel):
    """`{name: plugin, ...params}`; the params are validated by the plugin's own model."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str


class ViewSpec(BaseModel):
    """`{masker: plugin, ...params}`: a view derived from the batch once per step."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    masker: str


class ObjectiveSpec(BaseModel):
    """`{weight: w, use: plugin?, ...params}`; the key names the plugin unless `use` does."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
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
    # "bert": normal(0, 0.02) Linear/Embedding weights, zero biases, LayerNorm 1/0 for the text
    # encoder (unless pretrained), fusion, projections and objective heads; "pytorch": defaults
    init: Literal["pytorch", "bert"] = "pytorch"


class _DataCommon(_Strict):
    """Kept when a recipe's data section switches `source` (yamlio.SHARED_ON_SOURCE_SWITCH)."""

    image_size: int = Field(224, ge=16)
    channels: Literal[1, 3] = 1
    max_text_len: int = Field(128, ge=8)
    num_workers: int = Field(0, ge=0)
    seed: int = 0  # demo generation / held-out split
    min_val_size: int = Field(0, ge=0)  # fewer usable held-out pairs is a recipe error


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
    group_column: str | None = None  # patient/study column: no group on both sides of the split
    strict: bool = False


class WebDatasetData(_DataCommon):
    """Tar shards written by `vlp data shard` (needs the wds extra); see docs/data-sources.md."""

    source: Literal["webdataset"]
    urls: str | list[str]  # shard paths, brace-expanded: shards/shard-{000000..000009}.tar
    val_urls: str | list[str]  # held-out shards (read into memory)
    tokenizer_samples: int = Field(20000, ge=1)  # reports read to train a tokenizer


class ParamGroupSpec(_Strict):
    """Parameters whose dotted name matches the glob `match` (e.g. "fusion.*"): their learning
    rate times `lr_scale` and, if given, their own weight decay (0 to exempt them)."""

    match: str = Field(min_length=1)
    lr_scale: float = Field(1.0, gt=0)
    weight_decay: float | None = Field(None, ge=0, le=10)


class OptimSpec(_Strict):
    name: Literal["adamw"] = "adamw"
    lr: float = Field(1e-4, gt=0, le=1)
    weight_decay: float = Field(0.05, ge=0, le=10)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9, 0.98)
    eps: float = Field(1e-6, gt=0, le=1)
    groups: list[ParamGroupSpec] = []  # the first group matching a parameter applies


class ScheduleSpec(_Strict):
    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class TrainerSpec(_Strict):
    max_steps: int = Field(gt=0)  # the run's length, unless a budget below sets it
    # equal-compute budgets (at most one): the steps are floor(budget / cost of a step), >= 1
    budget_flops: float | None = Field(None, gt=0)  # training FLOPs, counted on step 0
    budget_samples: int | None = Field(None, gt=0)  # training pairs seen (steps x batch_size)
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
    grad_checkpointing: bool = False  # recompute encoder/fusion block activations in backward
    compile: bool = False  # torch.compile the encoders and the fusion
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate, or shard (FSDP2)
    threads: int | None = Field(None, gt=0)  # CPU threads; default: cores / local ranks
    eval_every: int = Field(0, ge=0)  # held-out retrieval every N steps (0: only at the end)
    best_metric: str = "mean_R"  # held-out metric (higher is better) picking checkpoints/best
    diagnostics_every: int = Field(0, ge=0)  # per-objective gradients -> gradients.jsonl (0: off)


class TaskSpec(BaseModel):
    """`{use: plugin?, ...params}`; the key names the task plugin unless `use` does."""

    model_config = ConfigDict(extra="allow")
    use: str | None = None


DEFAULT_TASKS = {"retrieval": {}}  # a recipe without `eval.tasks` runs held-out retrieval


class EvalSpec(_Strict):
    """The `eval:` section of a recipe, or a task file on its own (`vlp eval --tasks`)."""

    batch_size: int = Field(256, gt=0)  # frozen-feature passes
    ks: tuple[Annotated[int, Field(ge=1)], ...] = Field((1, 5, 10), min_length=1)  # retrieval
    tasks: dict[str, TaskSpec] = {name: TaskSpec() for name in DEFAULT_TASKS}  # run in order


class RecipeSpec(_Strict):
    seed: int = 0
    data: Annotated[DemoData | ManifestData | WebDatasetData, Field(discriminator="source")]
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
    provenance: Provenance = field(default_factory=dict, compare=False, repr=False)
    tasks: dict[str, Resolved] = field(default_factory=dict)  # downstream tasks of `eval:`

    def where(self, key: str) -> str:
        """"file:line" (or the --set) where `key` or its closest parent was written."""
        return where_of(self.provenance, key, self.source)

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


MISSING = "required key is missing"
DATA_SOURCES = ("demo", "manifest", "webdataset")


def close_name(given: str, allowed: list[str]) -> str | None:
    match = difflib.get_close_matches(given, allowed, n=1, cutoff=0.6)
    return match[0] if match else None


def _unknown_key(given: str, allowed: list[str]) -> str:
    hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
    guess = close_name(given, allowed)
    return "unknown key" + hint + (f"; did you mean `{guess}`?" if guess else "")


def _describe(err: dict[str, Any], allowed: list[str] | None) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return _unknown_key(str(err["loc"][-1]), allowed or [])
    if kind == "missing":
        return MISSING
    if kind == "union_tag_invalid":
        ctx = err["ctx"]
        return f"unknown value {ctx['tag']!r}; expected one of: {ctx['expected_tags']}"
    if kind == "union_tag_not_found":
        return f"{MISSING}; expected one of: {', '.join(map(repr, DATA_SOURCES))}"
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


def validation_problems(exc: ValidationError, prefix: str, prov: Provenance, source: str,
              model: type[BaseModel], extra_allowed: tuple[str, ...] = ()) -> list[Problem]:
    out = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        # discriminated unions put the tag in the loc; drop it for the user
        loc = tuple(p for p in loc if p not in DATA_SOURCES)
        if err["type"] == "union_tag_not_found":
            loc = (*loc, "source")
        key = ".".join(p for p in (prefix, *loc) if p)
        allowed = _fields_at(model, loc)
        if allowed is not None:
            allowed = sorted({*allowed, *extra_allowed})
        out.append(Problem(where_of(prov, key, source), key, _describe(err, allowed)))
    return out


def merge_misspellings(problems: list[Problem]) -> list[Problem]:
    """A required key missing beside an unknown key close to it is one typo: one message."""
    missing = {p.key for p in problems if p.reason == MISSING}
    merged: set[str] = set()
    out = []
    for problem in problems:
        parent, _, given = problem.key.rpartition(".")
        if problem.reason.startswith("unknown key"):
            siblings = [k.rpartition(".")[2] for k in missing if k.rpartition(".")[0] == parent
                        and k not in merged]
            guess = close_name(given, siblings)
            if guess:
                merged.add(f"{parent}.{guess}" if parent else guess)
                problem = Problem(problem.where, problem.key,
                                  f"unknown key `{problem.key}`, did you mean `{guess}`? "
                                  f"(`{guess}` is required)")
        out.append(problem)
    return [p for p in out if not (p.reason == MISSING and p.key in merged)]


_SECTION_MODELS: dict[str, type[BaseModel]] = {}


def _section_model(name: str) -> type[BaseModel]:
    """A one-field model for the top-level section `name`, validated on its own."""
    if name not in _SECTION_MODELS:
        info = RecipeSpec.model_fields[name]
        _SECTION_MODELS[name] = create_model(f"Section_{name}", __config__=ConfigDict(
            extra="forbid"), **{name: (info.annotation, info)})
    return _SECTION_MODELS[name]


def _check_sections(data: dict, prov: Provenance, source: str,
                    problems: list[Problem]) -> dict[str, Any]:
    """Validate each top-level section on its own, so one bad section hides no other problem;
    returns the sections that are valid."""
    fields = sorted(RecipeSpec.model_fields)
    for key in data:
        if key not in fields:
            problems.append(Problem(where_of(prov, str(key), source), str(key),
                                    _unknown_key(str(key), fields)))
    valid: dict[str, Any] = {}
    for name, info in RecipeSpec.model_fields.items():
        if name not in data:
            if info.is_required():
                problems.append(Problem(where_of(prov, name, source), name, MISSING))
            continue
        model = _section_model(name)
        try:
            valid[name] = getattr(model.model_validate({name: data[name]}), name)
        except ValidationError as exc:
            problems.extend(validation_problems(exc, "", prov, source, model))
    return valid


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
        params = cls.Params.model_validate({k: v for k, v in raw.items() if k not in core_keys})
    except ValidationError as exc:
        problems.extend(validation_problems(exc, key, prov, source, cls.Params, core_keys))
        return None
    return Resolved(key, plugin, cls, params, weight)


def _check_view(key: str, view: str, modality: str, views: dict[str, str],
                resolved: dict[str, Resolved], prov: Provenance, source: str,
                problems: list[Problem], masked: bool = False) -> None:
    """`views` maps each recipe-defined view to its masker's name."""
    produces = {n: r.cls.produces for n, r in resolved.items()}
    if masked and (view in BUILTIN_VIEWS or (view in resolved
                                              and modality not in resolved[view].cls.masks)):
        kind = "built-in, unmasked" if view in BUILTIN_VIEWS else \
            f"made by '{views[view]}', which masks no {modality}"
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
                                f"'{views[view]}' makes "
                                f"{', '.join(sorted(produces[view]))})"))


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _resolve_plugins(data: dict, valid: dict[str, Any], prov: Provenance, source: str,
                     problems: list[Problem]) -> tuple[dict[str, Resolved | None],
                                                       dict[str, Resolved], dict[str, Resolved]]:
    """Every plugin's own params, read from the raw recipe so that a problem elsewhere in its
    section (or in another section) does not hide them."""
    model_raw = _mapping(data.get("model"))
    encoders: dict[str, Resolved | None] = {}
    for field_name, kind in (("image_encoder", "image_encoder"), ("text_encoder", "text_encoder"),
                             ("fusion", "fusion")):
        raw = model_raw.get(field_name)
        name = raw.get("name") if isinstance(raw, dict) else None
        encoders[field_name] = None if not isinstance(name, str) else _resolve(
            kind, f"model.{field_name}", name, raw, prov, source, "name", ("name",), problems)

    view_specs = {str(n): v for n, v in _mapping(data.get("views")).items()
                  if isinstance(v, dict) and isinstance(v.get("masker"), str)}
    view_makers = {name: v["masker"] for name, v in view_specs.items()}
    views: dict[str, Resolved] = {}
    for name, masker in view_makers.items():
        key = f"views.{name}"
        if name in BUILTIN_VIEWS:
            problems.append(Problem(where_of(prov, key, source), key,
                                    f"'{name}' is a built-in view and cannot be redefined"))
            continue
        r = _resolve("masker", key, masker, view_specs[name], prov, source, "masker",
                     ("masker",), problems)
        if r is not None:
            views[name] = r

    objectives: dict[str, Resolved] = {}
    for name, raw in _mapping(data.get("objectives")).items():
        if not isinstance(raw, dict):
            continue
        key = f"objectives.{name}"
        weight, use = raw.get("weight"), raw.get("use")
        if weight == 0:  # off: not built, and nothing only it needed is computed
            continue
        r = _resolve("objective", key, use if isinstance(use, str) else str(name), raw, prov,
                     source, "use" if use else "", ("use", "weight"), problems,
                     weight if isinstance(weight, (int, float)) else 1.0)
        if r is None:
            continue
        objectives[str(name)] = r
        needs = r.cls.needs(r.params)
        for modality, named in (("image", needs.image_views), ("text", needs.text_views)):
            for param, view in named.items():
                _check_view(f"{key}.{param}", view, modality, view_makers, views, prov, source,
                            problems, masked=param in needs.masked)
        if needs.fusion and model_raw.get("fusion") is None:
            problems.append(Problem(where_of(prov, key, source), key,
                                    "reads fused image-text features but the recipe has no "
                                    "'model.fusion' (e.g. {name: cross_attention})"))
    uses = {name: r.cls.needs(r.params).embeddings for name, r in objectives.items()}
    if "train" not in uses.values():
        for name in (n for n, use in uses.items() if use == "read"):
            key = f"objectives.{name}"
            problems.append(Problem(where_of(prov, key, source), key, (
                "reads the shared image/text embeddings (e.g. to rank hard negatives), but no "
                "objective of this recipe trains them, so they would stay random: add one that "
                "does (itc, or gla with global_weight > 0) or do without them (for itm: "
                "negatives: random)")))
    return encoders, views, objectives


def resolve_tasks(raw: Any, prefix: str, prov: Provenance, source: str,
                  problems: list[Problem]) -> dict[str, Resolved]:
    """Bind each raw task entry (`{use?, ...params}`, keyed by name) to its plugin and validate
    its Params; `raw` None means the default tasks. Problems are appended."""
    tasks: dict[str, Resolved] = {}
    for name, entry in _mapping(DEFAULT_TASKS if raw is None else raw).items():
        if not isinstance(entry, dict):
            continue  # the section check reports it
        key = f"{prefix}.{name}"
        use = entry.get("use")
        r = _resolve("task", key, use if isinstance(use, str) else str(name), entry, prov,
                     source, "use" if use else "", ("use",), problems)
        if r is not None:
            tasks[str(name)] = r
    return tasks


def _device_problem(name: str) -> str | None:
    """Why `trainer.device` cannot be used on this machine, or None."""
    import torch

    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N"
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"device type {device.type!r} is not supported; expected auto, cpu, cuda or cuda:N"
    if not torch.cuda.is_available():
        return f"{name!r}: CUDA is not available on this machine; use auto or cpu"
    if device.index is not None and device.index >= torch.cuda.device_count():
        return f"{name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None


def _shard_problem(urls: str | list[str]) -> str | None:
    """Why these shard URLs cannot be read (missing extra, no shards, missing local files)."""
    if importlib.util.find_spec("webdataset") is None:
        return "data.source webdataset needs webdataset: pip install -e '.[wds]'"
    from vlp.data.shards import expand

    expanded = expand(urls)
    missing = [u for u in expanded if "://" not in u and not u.startswith("pipe:")
               and not Path(u).is_file()]
    if not expanded:
        return "no shards listed"
    return f"shard not found: {missing[0]} ({len(missing)} missing)" if missing else None


def _check_values(valid: dict[str, Any], prov: Provenance, source: str,
                  problems: list[Problem]) -> None:
    """Checks across sections, and of files and devices named by the recipe."""
    def add(key: str, reason: str) -> None:
        problems.append(Problem(where_of(prov, key, source), key, reason))

    data, trainer, eval_ = valid.get("data"), valid.get("trainer"), valid.get("eval")
    model = valid.get("model")
    if isinstance(data, ManifestData):
        for field_name in ("path", "val_path", "image_root"):
            value = getattr(data, field_name)
            if value is not None and not Path(value).exists():
                add(f"data.{field_name}", f"path does not exist: {value}")
        from vlp.data.manifest import manifest_problems

        for field_name in ("path", "val_path"):
            value = getattr(data, field_name)
            if value is not None and Path(value).is_file():
                for column, reason in manifest_problems(
                        Path(value), data.format, data.image_column, data.text_column,
                        data.id_column, data.group_column):
                    add(f"data.{column or field_name}", reason)
    if isinstance(data, WebDatasetData):
        for field_name in ("urls", "val_urls"):
            reason = _shard_problem(getattr(data, field_name))
            if reason:
                add(f"data.{field_name}", reason)
    if isinstance(data, DemoData) and trainer is not None and eval_ is not None:
        for key, size, need, what in (
                ("data.train_size", data.train_size, trainer.batch_size, "trainer.batch_size"),
                ("data.val_size", data.val_size, max(eval_.ks), "max(eval.ks)"),
                ("data.val_size", data.val_size, data.min_val_size, "data.min_val_size")):
            if size < need:
                add(key, f"{size} is smaller than {what} ({need})")
    if trainer is not None and eval_ is not None:
        metrics = {"mean_R", *(f"{d}_R@{k}" for d in ("i2t", "t2i") for k in eval_.ks)}
        if trainer.best_metric not in metrics:
            add("trainer.best_metric", f"unknown held-out metric {trainer.best_metric!r} "
                                       f"(expected one of: {', '.join(sorted(metrics))})")
    tokenizer = None if model is None else model.tokenizer.path
    if tokenizer is not None and not Path(tokenizer).is_file():
        add("model.tokenizer.path", f"file not found: {model.tokenizer.path}")
    if trainer is None:
        return
    if trainer.tensorboard and importlib.util.find_spec("tensorboard") is None:
        add("trainer.tensorboard", "tensorboard is not installed: pip install -e '.[tensorboard]'")
    if trainer.batch_size % trainer.grad_accum:
        add("trainer.batch_size", "must be divisible by trainer.grad_accum")
    if trainer.budget_flops is not None and trainer.budget_samples is not None:
        add("trainer.budget_samples", "set together with trainer.budget_flops "
            f"({where_of(prov, 'trainer.budget_flops', source)}); give at most one budget")
    if trainer.parallel == "fsdp" and trainer.eval_every:
        add("trainer.eval_every", "held-out evaluation during training needs the whole model on "
            "rank 0; with parallel: fsdp the run is evaluated once, at the end (set it to 0)")
    if trainer.parallel == "fsdp" and trainer.diagnostics_every:
        add("trainer.diagnostics_every", "gradient diagnostics need whole parameters on every "
            "rank; not available with parallel: fsdp (set it to 0, or use ddp)")
    reason = _device_problem(trainer.device)
    if reason:
        add("trainer.device", reason)


def validate(data: Any, prov: Provenance, source: str) -> Recipe:
    """Check a merged recipe mapping; raise RecipeError listing every problem found.

    Then the model is built on the meta device (no memory), so sizes that do not fit together
    and a model too large for the machine are recipe errors too.
    """
    if not isinstance(data, dict):
        raise RecipeError([Problem(source, "", "a recipe must be a mapping")])
    problems: list[Problem] = []
    valid = _check_sections(data, prov, source, problems)
    encoders, views, objectives = _resolve_plugins(data, valid, prov, source, problems)
    tasks = resolve_tasks(_mapping(data.get("eval")).get("tasks"), "eval.tasks", prov, source,
                          problems)
    if not objectives and not problems:
        problems.append(Problem(where_of(prov, "objectives", source), "objectives",
                                "no objective has a weight above 0"))
    _check_values(valid, prov, source, problems)
    if problems:
        raise RecipeError(merge_misspellings(problems))
    try:  # every section passed on its own, so this only assembles them
        spec = RecipeSpec.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(validation_problems(exc, "", prov, source, RecipeSpec)) from None
    image_encoder, text_encoder = encoders["image_encoder"], encoders["text_encoder"]
    assert image_encoder is not None and text_encoder is not None
    recipe = Recipe(source, spec, image_encoder, text_encoder, encoders["fusion"], views,
                    objectives, prov, tasks)
    from vlp.core.build_check import check_build  # builds VLPModel, which imports this module

    check_build(recipe)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, merge (`_base_`), override (`--set`) and validate a recipe file."""
    data, prov = load_with_bases(Path(path))
    for assignment in overrides:
        apply_override(data, prov, assignment)
    return validate(data, prov, str(path))


def load_task_file(path: str | Path) -> tuple[EvalSpec, dict[str, Resolved]]:
    """Read and validate a task file: an `eval:` section on its own (`tasks:`, `batch_size:`,
    `ks:`), with the same FILE:LINE: key: reason problems as a recipe, all at once."""
    source = str(path)
    try:
        data, prov = load_with_bases(Path(path))
    except RecipeError as exc:  # not YAML, not a mapping, missing
        raise TaskFileError(exc.problems) from None
    problems: list[Problem] = []
    spec = None
    try:
        spec = EvalSpec.model_validate(data)
    except ValidationError as exc:
        problems.extend(validation_problems(exc, "", prov, source, EvalSpec))
    tasks = resolve_tasks(data.get("tasks"), "tasks", prov, source, problems)
    if problems or spec is None:
        raise TaskFileError(merge_misspellings(problems))
    return spec, tasks
