"""Turns a list of pairs into a Batch: stacks images, tokenises reports (in loader workers)."""

from __future__ import annotations

import hashlib

import torch
from tokenizers import Tokenizer

from vlp.data.batch import Batch
from vlp.data.sample import Pair
from vlp.data.tokenize import BERT_SPECIALS, SpecialTokens, TokenIds


def text_hash(text: str) -> int:
    """Stable 63-bit id of a report's normalised text: identical reports are never negatives."""
    digest = hashlib.blake2b(" ".join(text.lower().split()).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class Collator:
    """Picklable collate function for DataLoader workers; pads to the longest report.

    Truncation stops at `max_len` or the tokenizer's own limit, whichever is shorter; padding
    uses the tokenizer's pad token and side."""

    def __init__(self, tokenizer: Tokenizer, max_len: int,
                 special: SpecialTokens = BERT_SPECIALS):
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        ids = TokenIds.of(self.tokenizer, special)
        self.tokenizer.enable_truncation(min(max_len, special.max_length or max_len))
        self.tokenizer.enable_padding(direction=special.padding_side, pad_id=ids.pad,
                                      pad_token=special.pad)

    def __call__(self, pairs: list[Pair]) -> Batch:
        encodings = self.tokenizer.encode_batch([p.text for p in pairs])
        word_ids = [[-1 if w is None else w for w in e.word_ids] for e in encodings]
        return Batch(
            image=torch.stack([p.image for p in pairs]),
            input_ids=torch.tensor([e.ids for e in encodings], dtype=torch.long),
            attention_mask=torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool),
            special_tokens_mask=torch.tensor([e.special_tokens_mask for e in encodings],
                                             dtype=torch.bool),
            word_ids=torch.tensor(word_ids, dtype=torch.long),
            sample_id=torch.tensor([p.sample_id for p in pairs], dtype=torch.long),
            text_id=torch.tensor([text_hash(p.text) for p in pairs], dtype=torch.long),
        )
