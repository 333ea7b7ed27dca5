"""Any local Hugging Face encoder folder (BERT, RoBERTa, PubMedBERT, ...) as vlp's text encoder.

Loaded through `transformers` with `local_files_only=True`: nothing is downloaded. The folder's
own tokenizer replaces the trained one, and its masked-language-model head, if the checkpoint
has one, is offered to MLM. Code shipped inside a folder (CXR-BERT) runs only with
`trust_remote_code: true`.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
from pydantic import model_validator
from tokenizers import Tokenizer
from torch import nn

from vlp.data.tokenize import SpecialTokens
from vlp.encoders.base import TextEncoder
from vlp.plugins.base import Params

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _transformers() -> ModuleType:
    try:
        import transformers
    except ImportError:
        raise ValueError("the hf_text encoder needs transformers: pip install -e '.[hf]'") from None
    return transformers


def _load_tokenizer(path: str, trust_remote_code: bool) -> Any:
    """The folder's fast tokenizer (its `backend_tokenizer` is a `tokenizers.Tokenizer`)."""
    transformers = _transformers()
    try:
        hf = transformers.AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ... here
        raise ValueError(f"cannot load the tokenizer of {path}: {exc}") from None
    if not getattr(hf, "is_fast", False):
        raise ValueError(f"the tokenizer of {path} is not a fast (tokenizers) tokenizer; save "
                         "it with tokenizer.json")
    return hf


def special_tokens_of(hf: Any, max_positions: int | None) -> SpecialTokens:
    """Roles of the special tokens, padding side and length limit of a transformers tokenizer."""
    roles = {"pad": hf.pad_token, "unk": hf.unk_token, "cls": hf.cls_token or hf.bos_token,
             "sep": hf.sep_token or hf.eos_token, "mask": hf.mask_token}
    missing = [role for role, token in roles.items() if token is None]
    if missing:
        raise ValueError(f"the tokenizer defines no {', '.join(missing)} token")
    limits = [n for n in (hf.model_max_length, max_positions) if n and n < 1_000_000]
    return SpecialTokens(**{role: str(token) for role, token in roles.items()},
                         padding_side=hf.padding_side, max_length=min(limits, default=None))


def check_folder(path: str, trust_remote_code: bool) -> dict[str, Any]:
    """The folder's config.json, after checking it is a loadable local Hugging Face folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"not a folder: {path}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path} has no config.json (not a Hugging Face model folder)")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config_file} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} is not a JSON object")
    if "auto_map" in config and not trust_remote_code:
        raise ValueError(f"{path} runs its own Python code (config.json has 'auto_map'); set "
                         "trust_remote_code: true if you trust that code")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(f"{path} has no weights ({' or '.join(WEIGHT_FILES[::2])})")
    transformers = _transformers()
    try:
        transformers.AutoConfig.from_pretrained(path, local_files_only=True,
                                                trust_remote_code=trust_remote_code)
    except Exception as exc:  # unknown model_type, bad values, missing remote code, ...
        raise ValueError(f"cannot read the config of {path}: {exc}") from None
    return config


def _mlm_head(model: nn.Module, missing_keys: set[str]) -> nn.Module | None:
    """The head of a *ForMaskedLM model, if the checkpoint held its weights (else None)."""
    prefix = model.base_model_prefix
    if any(not key.startswith(prefix + ".") for key in missing_keys):
        return None  # newly initialised: no better than a fresh head of vlp's own
    heads = [module for name, module in model.named_children() if name != prefix]
    return heads[0] if len(heads) == 1 else None


def _from_pretrained(path: str, options: dict[str, Any]) -> tuple[nn.Module, nn.Module | None]:
    """The encoder with its weights, and its masked-LM head where the checkpoint has one."""
    transformers = _transformers()
    try:
        full, info = transformers.AutoModelForMaskedLM.from_pretrained(
            path, output_loading_info=True, **options)
    except ValueError:  # this architecture has no masked-LM class
        return transformers.AutoModel.from_pretrained(path, **options), None
    return full.base_model, _mlm_head(full, set(info["missing_keys"]))


def _from_config(path: str, options: dict[str, Any]) -> tuple[nn.Module, nn.Module | None]:
    """The same modules without weights (under torch.device("meta"), where the recipe check
    sizes the model; transformers refuses to load weights there)."""
    transformers = _transformers()
    config = transformers.AutoConfig.from_pretrained(path, **options)
    remote = {"trust_remote_code": options["trust_remote_code"]}
    try:
        full = transformers.AutoModelForMaskedLM.from_config(config, **remote)
    except ValueError:
        return transformers.AutoModel.from_config(config, **remote), None
    return full.base_model, _mlm_head(full, set())


class HFText(TextEncoder):
    """A local Hugging Face encoder folder (transformers AutoModel) with its own tokenizer."""

    class Params(Params):
        path: str
        """A local folder written by save_pretrained (config.json, weights, tokenizer.json)."""
        trust_remote_code: bool = False
        """Run Python code shipped in the folder (CXR-BERT's auto_map); off unless set."""
        pool: Literal["cls", "mean"] = "cls"
        """Summary of a report: the first ([CLS]) token or the mean of its real tokens."""

        @model_validator(mode="after")
        def _loadable(self):
            config = check_folder(self.path, self.trust_remote_code)
            hf = _load_tokenizer(self.path, self.trust_remote_code)
            special_tokens_of(hf, config.get("max_position_embeddings"))
            return self

    @classmethod
    def pretrained_tokenizer(cls, params: Params) -> tuple[Tokenizer, SpecialTokens]:
        hf = _load_tokenizer(params.path, params.trust_remote_code)
        config = json.loads((Path(params.path) / "config.json").read_text())
        tokenizer = Tokenizer.from_str(hf.backend_tokenizer.to_str())
        tokenizer.no_padding()  # the collator sets padding and truncation from SpecialTokens
        tokenizer.no_truncation()
        return tokenizer, special_tokens_of(hf, config.get("max_position_embeddings"))

    def __init__(self, params: Params, vocab_size: int, pad_id: int, max_len: int):
        super().__init__(params, vocab_size, pad_id, max_len)
        options = dict(local_files_only=True, trust_remote_code=params.trust_remote_code)
        try:
            model, head = (_from_config(params.path, options)
                           if torch.empty(()).device.type == "meta"  # the recipe's size check
                           else _from_pretrained(params.path, options))
        except Exception as exc:  # broken or mismatched weights: OSError, SafetensorError, ...
            raise ValueError(f"cannot load the model in {params.path}: {exc}") from None
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # unused: vlp pools itself; unused weights would trouble DDP
        config = model.config
        if vocab_size > config.vocab_size:
            raise ValueError(f"the tokenizer has {vocab_size} tokens but the model's embeddings "
                             f"only {config.vocab_size}")
        self.model = model
        self._head = (head,)  # a tuple: not registered here, only under MLM if it is used
        self.width = config.hidden_size
        self.pool = params.pool

    def pretrained_mlm_head(self) -> nn.Module | None:
        return self._head[0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask.long())
        return out.last_hidden_state
