"""Eval-set decontamination: training rows that share a word n-gram with an eval item.

Words are runs of letters and digits in the case-folded, NFKC-normalised text, so punctuation,
case and spacing do not hide an overlap. The eval side is small and known up front: its n-gram
hashes go into one sorted uint64 array (12 bytes an n-gram with the owning item's index), and
each training row is checked with a single vectorised binary search.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import xxhash

from tuneforge.data._dedup import normalise_text

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The normalised word tokens that n-grams are made of."""
    return _WORD.findall(normalise_text(text))


class Decontaminator:
    """Finds the eval item a text shares a word ``ngram``-gram with.

    ``items`` are ``(item_id, text)`` pairs, e.g. ``("golden.jsonl:12", "...")``. An item with
    fewer than ``ngram`` words is indexed as one n-gram of all its words, so it matches a
    training text made of exactly those words; an item with no words at all is skipped.
    """

    def __init__(self, items: Iterable[tuple[str, str]], ngram: int = 13) -> None:
        if ngram < 1:
            raise ValueError(f"ngram must be at least 1, got {ngram}")
        self.ngram = ngram
        self._ids: list[str] = []
        hashes: list[int] = []
        owners: list[int] = []
        for item_id, text in items:
            hv = self._ngram_hashes(text)
            if hv:
                hashes += hv
                owners += [len(self._ids)] * len(hv)
                self._ids.append(item_id)
        keys = np.array(hashes, dtype=np.uint64)
        own = np.array(owners, dtype=np.int32)
        # Sorted by hash, and for an n-gram several items share, only the earliest item's entry.
        order = np.lexsort((own, keys))
        keys, own = keys[order], own[order]
        first = np.ones(keys.size, dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        self._keys = keys[first]
        self._owners = own[first]

    def __len__(self) -> int:
        return int(self._keys.size)

    def match(self, text: str) -> str | None:
        """The id of the earliest eval item sharing an n-gram with ``text``, or None."""
        hv = self._ngram_hashes(text)
        if not hv or not self._keys.size:
            return None
        probe = np.array(hv, dtype=np.uint64)
        at = np.searchsorted(self._keys, probe).clip(max=self._keys.size - 1)
        hit = self._keys[at] == probe
        if not hit.any():
            return None
        return self._ids[int(self._owners[at[hit]].min())]

    def _ngram_hashes(self, text: str) -> list[int]:
        w = words(text)
        n = self.ngram
        if len(w) < n:
            return [xxhash.xxh64_intdigest(" ".join(w).encode())] if w else []
        grams = map(" ".join, zip(*(w[i:] for i in range(n)), strict=False))  # the len(w) - n + 1 windows
        return [xxhash.xxh64_intdigest(g.encode()) for g in grams]
