"""Report tokenizers (`tokenizers` library): trained on the training reports or loaded from a file.

Training is not reproducible across processes (ties between equally frequent merges are broken
differently, so token ids change), so a run trains once, saves `tokenizer.json` in its folder and
every later use (resume, evaluation, other ranks) loads that file. To share one vocabulary across
runs, point `model.tokenizer.path` at a saved file. A pretrained text encoder brings its own
tokenizer instead (its `SpecialTokens` say which token plays which role, and how it pads).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from vlp.files import write_text_atomic


@dataclass(frozen=True)
class SpecialTokens:
    """Which token plays which role, the padding side and the longest input: BERT's names for
    a trained tokenizer; a Hugging Face tokenizer supplies its own (RoBERTa: <pad>, <s>, ...)."""

    pad: str = "[PAD]"
    unk: str = "[UNK]"
    cls: str = "[CLS]"
    sep: str = "[SEP]"
    mask: str = "[MASK]"
    padding_side: Literal["right", "left"] = "right"
    max_length: int | None = None  # the model's limit, if it has one

    @property
    def names(self) -> list[str]:
        return [self.pad, self.unk, self.cls, self.sep, self.mask]

    def save(self, path: str | Path) -> None:
        write_text_atomic(Path(path), json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> SpecialTokens:
        return cls(**json.loads(Path(path).read_text()))


BERT_SPECIALS = SpecialTokens()
SPECIAL_TOKENS = BERT_SPECIALS.names  # what a trained tokenizer reserves, in id order


@dataclass(frozen=True)
class TokenIds:
    """Ids of the special tokens and the vocabulary size, what models and maskers need."""

    vocab_size: int
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    @property
    def first_regular(self) -> int:
        """Lowest id above the special tokens at the start of the vocabulary: random MLM
        replacements start here (RoBERTa's <mask> sits at the end and does not count)."""
        low = [i for i in (self.pad, self.unk, self.cls, self.sep, self.mask)
               if i < self.vocab_size // 2]
        return max(low, default=-1) + 1

    @classmethod
    def of(cls, tok: Tokenizer, special: SpecialTokens = BERT_SPECIALS) -> TokenIds:
        ids = [tok.token_to_id(t) for t in special.names]
        if any(i is None for i in ids):
            missing = [t for t, i in zip(special.names, ids) if i is None]
            raise ValueError(f"tokenizer lacks special tokens {missing}")
        return cls(tok.get_vocab_size(), *ids)


def _finish(tok: Tokenizer) -> Tokenizer:
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return tok


def train_tokenizer(texts: Iterable[str], kind: str = "bpe", vocab_size: int = 4000,
                    min_frequency: int = 2, lowercase: bool = True) -> Tokenizer:
    """Train a subword tokenizer with BERT normalisation and [CLS] ... [SEP] framing."""
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##"))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=SPECIAL_TOKENS,
                                      continuing_subword_prefix="##", show_progress=False)
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=SPECIAL_TOKENS, show_progress=False)
    else:
        raise ValueError(f"unknown tokenizer kind '{kind}' (bpe or wordpiece)")
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.train_from_iterator(texts, trainer=trainer)
    return _finish(tok)


def load_tokenizer(path: str | Path, special: SpecialTokens = BERT_SPECIALS) -> Tokenizer:
    """Load a saved tokenizer.json; it must contain the special tokens."""
    tok = Tokenizer.from_file(str(path))
    TokenIds.of(tok, special)
    return tok
