"""Exact and near-duplicate detection: normalised content keys, MinHash signatures, LSH index.

Signatures are datasketch MinHash signatures (the default "affine32" scheme: 32-bit input hashes
pre-mixed with MurmurHash3's finaliser, then ``a * h + b mod 2**32`` with datasketch's seeded
permutations), computed for a whole batch of texts in a few numpy operations instead of one
``MinHash`` object per text; a test checks they equal ``MinHash.bulk``'s bit for bit. Shingles
are hashed with xxhash, ten times faster than datasketch's default SHA-1 and as good for this.

The index takes its band/row choice from datasketch's ``MinHashLSH`` and stores buckets
compactly: datasketch's own storage keeps a Python ``set`` per bucket and a list of band keys per
row, about 3 KB a row (3 GB for a million rows, measured); flat arrays need about 0.3 KB, plus
0.5 KB for the row's signature, which every band hit is checked against. Band keys are computed
for whole batches with numpy (in the worker processes), leaving the parent table look-ups.
"""

from __future__ import annotations

import hashlib
import unicodedata
from array import array
from collections.abc import Sequence
from itertools import accumulate

import numpy as np
import xxhash

# Shingles hashed in one numpy block: 4096 x 128 permutations x 4 bytes = 2 MiB.
_BLOCK = 4096
_UINT32_MAX = np.uint32(0xFFFFFFFF)


def normalise_text(text: str) -> str:
    """Case-folded, NFKC-normalised text with runs of whitespace collapsed to one space."""
    if text.isascii():
        folded = text.lower()  # the same as NFKC + casefold for ASCII, and much cheaper
    else:
        # Case folding can produce characters NFKC would rewrite, hence normalising twice.
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(folded.split())


def content_key(text: str) -> bytes:
    """16-byte BLAKE2b digest of the normalised text: the exact-duplicate key."""
    return hashlib.blake2b(normalise_text(text).encode("utf-8"), digest_size=16).digest()


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, in place; datasketch applies it before permuting."""
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


class MinHasher:
    """MinHash signatures of word shingles, identical to datasketch's ``MinHash`` (affine32).

    A text's shingles are its runs of ``shingle_size`` consecutive words after
    ``normalise_text``; a text with fewer words is one shingle. ``seed`` picks datasketch's
    permutations, so equal seeds give equal signatures in every process.
    """

    def __init__(self, num_perm: int = 128, shingle_size: int = 5, seed: int = 1) -> None:
        from datasketch import MinHash

        if shingle_size < 1:
            raise ValueError(f"shingle_size must be at least 1, got {shingle_size}")
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.seed = seed
        template = MinHash(num_perm=num_perm, seed=seed, scheme="affine32")
        self._a, self._b = (np.ascontiguousarray(p, dtype=np.uint32) for p in template.permutations)

    def shingle_hashes(self, text: str) -> list[int]:
        """32-bit xxhash of each shingle's UTF-8 bytes (the words joined by single spaces)."""
        data = normalise_text(text).encode("utf-8")
        words = data.split(b" ")
        k = self.shingle_size
        if len(words) <= k:
            return [xxhash.xxh32_intdigest(data)]
        # zip stops at the shortest shifted copy: exactly the len(words) - k + 1 full shingles.
        shingles = map(b" ".join, zip(*(words[i:] for i in range(k)), strict=False))
        return list(map(xxhash.xxh32_intdigest, shingles))

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """One row of ``num_perm`` uint32 minimum hash values per text."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        rows: list[int] = []
        hashes: list[list[int]] = []
        pending = 0
        for i, text in enumerate(texts):
            hv = self.shingle_hashes(text)
            if len(hv) > _BLOCK:  # a long text on its own, block by block
                out[i] = self._long_signature(hv)
                continue
            rows.append(i)
            hashes.append(hv)
            pending += len(hv)
            if pending >= _BLOCK:
                out[rows] = self._block_signatures(hashes, pending)
                rows, hashes, pending = [], [], 0
        if rows:
            out[rows] = self._block_signatures(hashes, pending)
        return out

    def _permuted(self, hv: np.ndarray) -> np.ndarray:
        """(len(hv), num_perm) permuted hash values."""
        phv = np.multiply.outer(_fmix32(hv), self._a)
        phv += self._b
        return phv

    def _block_signatures(self, hashes: list[list[int]], total: int) -> np.ndarray:
        flat = np.fromiter((h for hv in hashes for h in hv), dtype=np.uint32, count=total)
        starts = np.fromiter(accumulate((len(hv) for hv in hashes[:-1]), initial=0), dtype=np.intp, count=len(hashes))
        return np.minimum.reduceat(self._permuted(flat), starts, axis=0)

    def _long_signature(self, hv: list[int]) -> np.ndarray:
        sig = np.full(self.num_perm, _UINT32_MAX, dtype=np.uint32)
        for at in range(0, len(hv), _BLOCK):
            block = np.array(hv[at : at + _BLOCK], dtype=np.uint32)
            np.minimum(sig, self._permuted(block).min(axis=0), out=sig)
        return sig


class _BandTable:
    """One band's buckets, in place of datasketch's ``DictSetStorage``.

    That storage keeps a Python ``set`` per bucket (216+ bytes) under a dict entry; this is an
    open-addressing table in flat arrays (8 bytes a slot, at most half full) mapping a band key
    to the newest row that has it, with older rows chained through ``_next`` (4 bytes a row).
    Rows must arrive numbered 0, 1, 2, ... as the index assigns them.
    """

    __slots__ = ("_heads", "_keys", "_mask", "_next", "_used")

    def __init__(self) -> None:
        self._keys = array("I", bytes(4 << 10))  # stored key = band key + 1; 0 marks a free slot
        self._heads = array("i", bytes(4 << 10))
        self._next = array("i")
        self._mask = (1 << 10) - 1
        self._used = 0

    def _slot(self, stored: int) -> int:
        keys, mask = self._keys, self._mask
        i = stored & mask
        while keys[i] != 0 and keys[i] != stored:
            i = (i + 1) & mask
        return i

    def get(self, key: int) -> list[int]:
        return self.lookup(key)[1]

    def lookup(self, key: int) -> tuple[int, list[int]]:
        """The rows with ``key``, newest first, and its slot (for ``insert_at``)."""
        i = self._slot(key + 1)
        if self._keys[i] == 0:
            return i, []
        rows = []
        row = self._heads[i]
        nxt = self._next
        while row >= 0:
            rows.append(row)
            row = nxt[row]
        return i, rows

    def insert(self, key: int, row: int) -> None:
        self.insert_at(self._slot(key + 1), key, row)

    def insert_at(self, i: int, key: int, row: int) -> None:
        """``insert(key, row)`` given the slot ``lookup(key)`` returned, with nothing inserted since."""
        if row != len(self._next):
            raise ValueError(f"rows must be inserted in order: expected {len(self._next)}, got {row}")
        if self._keys[i] == 0:
            self._keys[i] = key + 1
            self._next.append(-1)
            self._used += 1
        else:
            self._next.append(self._heads[i])
        self._heads[i] = row
        if 2 * self._used > self._mask:
            self._grow()

    def size(self) -> int:
        return self._used

    def _grow(self) -> None:
        """Double the table, re-placing every key with vectorised linear probing."""
        keys = np.frombuffer(self._keys, dtype=np.uint32)
        full = np.flatnonzero(keys)
        stored, heads = keys[full], np.frombuffer(self._heads, dtype=np.int32)[full]
        mask = 2 * (self._mask + 1) - 1
        new_keys = np.zeros(mask + 1, dtype=np.uint32)
        new_heads = np.zeros(mask + 1, dtype=np.int32)
        slot = (stored & np.uint32(mask)).astype(np.intp)
        waiting = np.arange(stored.size)
        while waiting.size:
            # Each free target slot goes to the first key aiming at it; everyone else moves on.
            target = slot[waiting]
            free = new_keys[target] == 0
            taken, first = np.unique(target[free], return_index=True)
            winners = waiting[free][first]
            new_keys[taken] = stored[winners]
            new_heads[taken] = heads[winners]
            placed = np.zeros(stored.size, dtype=bool)
            placed[winners] = True
            waiting = waiting[~placed[waiting]]
            slot[waiting] = (slot[waiting] + 1) & mask
        self._keys = array("I", new_keys.tobytes())
        self._heads = array("i", new_heads.tobytes())
        self._mask = mask


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) from datasketch's optimiser, weighting misses 19:1.

    Candidates are checked against their signatures, so a false band hit costs only that check
    while a missed one loses a duplicate: 19:1 gives 16 bands of 8 at the default 0.8 threshold
    and 95% recall at it (the even default, 9 x 13, gives 40%).
    """
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.05, 0.95))
    return lsh.b, lsh.r


_MIX = np.uint64(0x9E3779B97F4A7C15)


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) 30-bit keys, one per band of each signature, computed for a batch at once.

    30 bits keep each key a small int in the flat tables; a chance collision only adds a
    candidate that the signature check then rejects. Workers compute these, so the parent's
    per-row work is table look-ups.
    """
    sig = np.asarray(signatures, dtype=np.uint32)
    if sig.ndim == 1:
        sig = sig[None, :]
    n = sig.shape[0]
    cols = sig[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    h = np.zeros((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):
            h = (h ^ cols[:, :, j]) * _MIX
            h ^= h >> np.uint64(29)
    return (h & np.uint64(0x3FFFFFFF)).astype(np.uint32)


class NearDuplicateIndex:
    """Rows indexed by MinHash signature; finds an earlier row with estimated Jaccard >= threshold.

    LSH band collisions only nominate candidates: each is checked against its stored signature
    (the share of equal hash values estimates the Jaccard similarity), and the earliest indexed
    row that passes is the match. Signatures are kept in one growing uint32 array and each band
    in a flat open-addressing table: about 0.8 KB a row (1M rows in ~1 GiB).
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128) -> None:
        self.threshold = threshold
        self.num_perm = num_perm
        self.bands, self.rows_per_band = lsh_bands(threshold, num_perm)
        self._tables = [_BandTable() for _ in range(self.bands)]
        self._signatures = np.empty((1024, num_perm), dtype=np.uint32)
        self._keys: list[str] = []

    def __len__(self) -> int:
        return len(self._keys)

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        return band_keys(signatures, self.bands, self.rows_per_band)

    def candidates(self, keys: np.ndarray) -> list[int]:
        """Indexed rows sharing at least one band key with ``keys``, oldest first."""
        found: set[int] = set()
        for table, k in zip(self._tables, keys.tolist(), strict=True):
            found.update(table.get(k))
        return sorted(found)

    def add_or_match(self, key: str, signature: np.ndarray, keys: np.ndarray | None = None) -> str | None:
        """The key of an indexed near-duplicate of ``signature``; if there is none, index it.

        ``keys`` are the signature's band keys when the caller computed them in a batch.
        """
        sig = np.asarray(signature, dtype=np.uint32)
        if sig.shape != (self.num_perm,):
            raise ValueError(f"expected a signature of shape ({self.num_perm},), got {sig.shape}")
        if keys is None:
            keys = self.band_keys(sig)[0]
        # One probe per band serves both the candidate look-up and, if the row is new, its insert.
        per_band = keys.tolist()
        found: set[int] = set()
        slots: list[int] = []
        for table, k in zip(self._tables, per_band, strict=True):
            # _BandTable.lookup, inlined: this loop runs 16 times for every row of the dataset.
            stored, table_keys, mask = k + 1, table._keys, table._mask
            slot = stored & mask
            while (at := table_keys[slot]) != 0 and at != stored:
                slot = (slot + 1) & mask
            slots.append(slot)
            if at:
                row, nxt = table._heads[slot], table._next
                while row >= 0:
                    found.add(row)
                    row = nxt[row]
        rows = sorted(found)
        if rows:
            similarity = np.count_nonzero(self._signatures[rows] == sig, axis=1) / self.num_perm
            passing = np.flatnonzero(similarity >= self.threshold)
            if passing.size:
                return self._keys[rows[int(passing[0])]]
        row = len(self._keys)
        if row == len(self._signatures):
            grown = np.empty((2 * row, self.num_perm), dtype=np.uint32)
            grown[:row] = self._signatures
            self._signatures = grown
        self._signatures[row] = sig
        self._keys.append(key)
        for table, slot, k in zip(self._tables, slots, per_band, strict=True):
            table.insert_at(slot, k, row)
        return None
