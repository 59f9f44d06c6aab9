"""One ``seed`` setting, many random sources: the seed of each source's own stream.

A run has one ``seed``, but every random source (initial weights, validation split, test
subsample, scoring batches, Rand scores, ERK draws, shuffling and augmentation, dropout,
density-matched controls) draws from its own generator, seeded by :func:`stream_seed`. Two
generators seeded with the same number draw the same values: a Rand mask scored from the
initial weights' generator would keep the largest weights instead of a random set.
"""
from __future__ import annotations

import hashlib


def stream_seed(seed: int, stream: str) -> int:
    """The seed of random source ``stream`` in a run whose setting is ``seed`` (< 2**63)."""
    digest = hashlib.sha256(f"{int(seed)}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # torch seeds are < 2**63
