"""One way to derive independent random seeds from several parts (seed, step, rank, name).

Every random stream of a run (data order, a step's masks, a view's or a sampler's draws) is
seeded by mixing its parts here, so streams never collide by accident (e.g. seed 1 step 0 and
seed 0 step 1_000_003) and exact resume only needs the parts, never a saved generator.
"""

from __future__ import annotations

import zlib

_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One round of the SplitMix64 finaliser: a bijective, well-avalanching 64-bit mix."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from ints and names; order matters, equal parts give equal seeds."""
    state = 0
    for part in parts:
        value = zlib.crc32(part.encode()) if isinstance(part, str) else int(part)
        state = _splitmix64(state ^ (value & _MASK))
    return state >> 1
