"""Stable hash-based train/val/test assignment.

A row's split depends only on its content key and the seed, so appending rows to the input never
moves an existing row to another split (a seeded shuffle would).
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")


def assign_split(content_key: bytes, seed: int, train: float, val: float) -> str:
    digest = hashlib.blake2b(content_key, digest_size=8, key=str(seed).encode()).digest()
    u = int.from_bytes(digest, "big") / 2**64
    if u < train:
        return "train"
    if u < train + val:
        return "val"
    return "test"


def mix_rank(content_key: bytes, seed: int) -> int:
    """A seeded pseudo-random rank used to pick general-purpose rows for mixing."""
    return int.from_bytes(hashlib.blake2b(content_key, digest_size=8, key=f"mix{seed}".encode()).digest(), "big")
