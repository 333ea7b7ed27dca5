"""Report tokenizers (`tokenizers` library): trained on the training reports or loaded from a file.

Training is not reproducible across processes (ties between equally frequent merges are broken
differently, so token ids change), so a run trains once, saves `tokenizer.json` in its folder and
every later use (resume, evaluation, other ranks) loads that file. To share one vocabulary across
runs, point `model.tokenizer.path` at a saved file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


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
        """Lowest id above every special token: random MLM replacements start here."""
        return max(self.pad, self.unk, self.cls, self.sep, self.mask) + 1

    @classmethod
    def of(cls, tok: Tokenizer) -> TokenIds:
        ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
        if any(i is None for i in ids):
            missing = [t for t, i in zip(SPECIAL_TOKENS, ids) if i is None]
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


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a saved tokenizer.json; it must contain vlp's special tokens."""
    tok = Tokenizer.from_file(str(path))
    TokenIds.of(tok)
    return tok
