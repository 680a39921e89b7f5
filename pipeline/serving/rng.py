"""Seeded randomness: one private RNG per purpose, all reproducible from the `seed` setting."""

from __future__ import annotations

import random


def seeded_rng(seed: int, purpose: str) -> random.Random:
    """An RNG for one `purpose`, reproducible from `seed` and independent of other purposes.

    Separate purposes keep mechanisms apart: turning latency jitter on does not change which
    requests fail. A string seed is hashed with SHA-512 by `random`, so the sequence does not
    depend on PYTHONHASHSEED or the process.
    """
    return random.Random(f"{purpose}:{seed}")
