"""Exact keys, MinHash signatures and the near-duplicate index."""

from __future__ import annotations

import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
from datasketch import MinHash

from tuneforge.data._dedup import (
    _BLOCK,
    MinHasher,
    NearDuplicateIndex,
    _BandTable,
    content_key,
    normalise_text,
)

TICKET = (
    "Hello support team, since the update on Monday the mobile app crashes every time I open the "
    "stock count screen on my tablet. I already reinstalled the app, cleared the cache and restarted "
    "the device twice, but nothing helped. Our warehouse staff cannot do the weekly inventory "
    "without it, so please tell me whether a fix is coming soon. Thanks, Maria"
)


def _replace(text: str, changes: dict[int, str]) -> str:
    words = text.split()
    for at, word in changes.items():
        words[at] = word
    return " ".join(words)


def _jaccard(a: str, b: str, k: int = 5) -> float:
    def shingles(t: str) -> set[str]:
        w = normalise_text(t).split(" ")
        return {" ".join(w[i : i + k]) for i in range(len(w) - k + 1)}

    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def test_normalisation_makes_case_and_spacing_variants_exact_duplicates() -> None:
    base = "Hello World, my order 123 is late."
    variants = ["hello world, my order 123 is late.", "  HELLO\tWorld,\n\nmy  order 123 is late.  ", "Hello World, my order 123 is late.\u00a0"]
    assert {content_key(v) for v in variants} == {content_key(base)}
    assert len(content_key(base)) == 16
    assert content_key(base) != content_key("Hello World, my order 124 is late.")
    assert content_key("hello world") != content_key("helloworld")  # spacing collapses, never vanishes


def test_normalise_text_folds_unicode() -> None:
    assert normalise_text("  Straße \u2003 ＡＢＣ ﬁle  ") == "strasse abc file"
    assert normalise_text("Ünïcode\nTEXT") == "ünïcode text"
    assert normalise_text("") == ""


def test_shingles_are_word_windows_or_the_whole_short_text() -> None:
    h = MinHasher(shingle_size=3)
    assert len(h.shingle_hashes("one two")) == 1  # fewer words than a shingle: the whole text
    assert h.shingle_hashes("one two") == h.shingle_hashes("ONE   two")
    assert len(h.shingle_hashes("one two three")) == 1
    assert len(h.shingle_hashes("one two three four five")) == 3
    assert h.shingle_hashes("a b c d")[1] == h.shingle_hashes("b c d")[0]  # windows of the same words


def test_signatures_equal_datasketch_minhash() -> None:
    h = MinHasher(num_perm=64, shingle_size=4, seed=7)
    rng = random.Random(1)
    long_text = " ".join(f"w{rng.randrange(50_000)}" for _ in range(_BLOCK + 500))  # more than one block
    texts = [TICKET, "", "short", "a b c d", long_text] + [_replace(TICKET, {i: "x"}) for i in range(0, 60, 7)]
    texts += [" ".join(rng.choices(["alpha", "beta", "gamma", "delta", "épsilon"], k=rng.randint(1, 90))) for _ in range(400)]
    sigs = h.signatures(texts)
    assert sigs.shape == (len(texts), 64) and sigs.dtype == np.uint32
    reference = MinHash.bulk((h.shingle_hashes(t) for t in texts), num_perm=64, seed=7, hashfunc=int)
    assert np.array_equal(sigs, np.stack([m.hashvalues for m in reference]))
    assert h.signatures([]).shape == (0, 64)


def test_signatures_estimate_jaccard() -> None:
    h = MinHasher()
    rng = random.Random(2)
    vocab = [f"word{i}" for i in range(5000)]
    for shared in (10, 30, 50):
        a = rng.sample(vocab, 60)
        b = a[:shared] + rng.sample(vocab, 60 - shared)
        sa, sb = h.signatures([" ".join(a), " ".join(b)])
        estimate = float(np.mean(sa == sb))
        assert estimate == pytest.approx(_jaccard(" ".join(a), " ".join(b)), abs=0.12)


def test_same_seed_same_signatures_in_any_process() -> None:
    texts = [TICKET, "another ticket about billing", ""]
    one = MinHasher(seed=3).signatures(texts)
    assert np.array_equal(one, MinHasher(seed=3).signatures(texts))
    assert np.array_equal(one, pickle.loads(pickle.dumps(MinHasher(seed=3))).signatures(texts))
    assert not np.array_equal(one, MinHasher(seed=4).signatures(texts))
    # Python's own str hash is salted per process; the signatures must not depend on it.
    code = (
        "import sys; from tuneforge.data._dedup import MinHasher; "
        "sys.stdout.write(MinHasher(seed=3).signatures(sys.argv[1:]).tobytes().hex())"
    )
    for salt in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code, *texts], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": salt}
        )
        assert out.stdout == one.tobytes().hex()


def test_near_duplicates_match_and_name_the_first_row() -> None:
    one_word = _replace(TICKET, {30: "phone"})  # 5 of 56 shingles change: Jaccard 0.84
    two_words = _replace(TICKET, {1: "Support,", 57: "Cheers,"})  # near the ends, 4 change: 0.87
    assert _jaccard(TICKET, one_word) > 0.8 and _jaccard(TICKET, two_words) > 0.8
    h = MinHasher()
    original, a, b = h.signatures([TICKET, one_word, two_words])
    index = NearDuplicateIndex(threshold=0.8)
    assert index.add_or_match("tickets.jsonl:1", original) is None
    assert index.add_or_match("tickets.jsonl:7", a) == "tickets.jsonl:1"
    assert index.add_or_match("tickets.jsonl:9", b) == "tickets.jsonl:1"
    assert len(index) == 1  # matched rows are not indexed


def test_two_scattered_word_changes_are_below_the_default_threshold() -> None:
    # With 5-word shingles each changed word alters 5 shingles, so two changes in the middle of
    # a 60-word ticket leave Jaccard 0.70: not a near-duplicate at 0.8, one at 0.6.
    changed = _replace(TICKET, {20: "tablet", 40: "phone"})
    assert _jaccard(TICKET, changed) == pytest.approx(0.70, abs=0.02)
    original, other = MinHasher().signatures([TICKET, changed])
    strict, loose = NearDuplicateIndex(0.8), NearDuplicateIndex(0.6)
    for index in (strict, loose):
        index.add_or_match("first", original)
    assert strict.add_or_match("second", other) is None
    assert loose.add_or_match("second", other) == "first"


def test_recall_near_the_threshold() -> None:
    # One word changed mid-text: true Jaccard 0.84, just over 0.8. LSH alone would find only
    # ~60% of these with datasketch's even weights; the index weights misses higher, and the
    # rest are lost to the MinHash estimate's own noise (sd ~0.03).
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(5000)]
    h = MinHasher()
    index = NearDuplicateIndex(0.8)
    found = 0
    for n in range(200):
        words = rng.sample(vocab, 60)
        changed = list(words)
        changed[30] = "changed"
        first, second = h.signatures([" ".join(words), " ".join(changed)])
        assert index.add_or_match(f"a{n}", first) is None
        found += index.add_or_match(f"b{n}", second) == f"a{n}"
    assert found >= 0.8 * 200


def test_distinct_texts_are_not_matched() -> None:
    rng = random.Random(4)
    vocab = [f"w{i}" for i in range(2000)]
    texts = [" ".join(rng.choices(vocab, k=60)) for _ in range(2000)]
    index = NearDuplicateIndex(0.8)
    for i, sig in enumerate(MinHasher().signatures(texts)):
        assert index.add_or_match(f"row{i}", sig) is None
    assert len(index) == 2000


def test_threshold_is_respected() -> None:
    rng = random.Random(5)
    a = rng.sample([f"w{i}" for i in range(5000)], 60)
    b = a[:44] + [f"new{i}" for i in range(16)]  # 40 of 72 shingles shared
    assert _jaccard(" ".join(a), " ".join(b)) == pytest.approx(0.556, abs=0.01)
    sa, sb = MinHasher().signatures([" ".join(a), " ".join(b)])
    for threshold, expected in ((0.8, None), (0.7, None), (0.4, "a")):
        index = NearDuplicateIndex(threshold)
        index.add_or_match("a", sa)
        assert index.add_or_match("b", sb) == expected, threshold


def test_a_band_hit_alone_is_not_a_match() -> None:
    index = NearDuplicateIndex(0.8)
    rng = np.random.default_rng(6)
    first = rng.integers(0, 2**32, 128, dtype=np.uint32)
    index.add_or_match("first", first)
    r = index.rows_per_band
    other = rng.integers(0, 2**32, 128, dtype=np.uint32)
    other[:r] = first[:r]  # same first band: an LSH candidate, estimated Jaccard r/128
    assert index.candidates(index.band_keys(other)[0]) == [0]
    assert index.add_or_match("second", other) is None
    other[: int(0.85 * 128)] = first[: int(0.85 * 128)]
    assert index.add_or_match("third", other) == "first"


def test_the_earliest_of_several_matches_is_named() -> None:
    rng = np.random.default_rng(9)
    probe = rng.integers(0, 2**32, 128, dtype=np.uint32)
    older, newer = probe.copy(), probe.copy()
    older[:16] += 1  # each 112/128 like the probe, but only 96/128 like each other
    newer[16:32] += 1
    index = NearDuplicateIndex(0.8)
    assert index.add_or_match("older", older) is None
    assert index.add_or_match("newer", newer) is None
    assert index.add_or_match("probe", probe) == "older"


def test_signature_shape_is_checked() -> None:
    with pytest.raises(ValueError, match=r"\(128,\)"):
        NearDuplicateIndex(0.8, 128).add_or_match("x", np.zeros(64, dtype=np.uint32))


def test_band_table_matches_a_dict_through_growth() -> None:
    rng = random.Random(7)
    table, reference = _BandTable(), {}
    for row in range(30_000):  # grows from 1,024 slots several times
        key = rng.randrange(1 << 12) if row % 3 else rng.randrange(1 << 30)
        table.insert(key, row)
        reference.setdefault(key, []).append(row)
    assert table.size() == len(reference)
    for key, rows in reference.items():
        assert sorted(table.get(key)) == rows
    assert table.get(1 << 30) == []
    with pytest.raises(ValueError, match="in order"):
        table.insert(5, 12)


def test_many_rows_stay_searchable() -> None:
    rng = np.random.default_rng(8)
    sigs = rng.integers(0, 2**32, size=(20_000, 128), dtype=np.uint32)
    index = NearDuplicateIndex(0.8)
    assert all(index.add_or_match(f"r{i}", s) is None for i, s in enumerate(sigs))
    probe = sigs[12_345].copy()
    probe[:10] += 1  # estimated Jaccard 118/128
    assert index.add_or_match("probe", probe) == "r12345"
    assert len(index) == 20_000


def test_batched_band_keys_equal_per_row_keys() -> None:
    rng = np.random.default_rng(10)
    sigs = rng.integers(0, 2**32, size=(50, 128), dtype=np.uint32)
    index = NearDuplicateIndex(0.8)
    batch = index.band_keys(sigs)
    assert batch.shape == (50, index.bands) and batch.max() < 2**30
    assert all((index.band_keys(s)[0] == batch[i]).all() for i, s in enumerate(sigs))
    a, b = sigs[0].copy(), sigs[1].copy()
    b[index.rows_per_band : 2 * index.rows_per_band] = a[index.rows_per_band : 2 * index.rows_per_band]
    ka, kb = index.band_keys(a)[0], index.band_keys(b)[0]
    assert ka[1] == kb[1] and (ka != kb).sum() == index.bands - 1  # only the shared band collides


def test_index_answers_like_a_brute_force_search() -> None:
    # Few distinct band keys force long chains and shared buckets; the answer must still be the
    # earliest indexed row that shares a band key and passes the threshold.
    rng = np.random.default_rng(12)
    index = NearDuplicateIndex(0.8)
    bases = rng.integers(0, 2**32, size=(40, 128), dtype=np.uint32)
    kept: list[tuple[str, np.ndarray, np.ndarray]] = []
    for i in range(2000):
        sig = bases[rng.integers(0, 40)].copy()
        flip = rng.random(128) < rng.choice([0.02, 0.3, 0.9])
        sig[flip] = rng.integers(0, 2**32, size=int(flip.sum()), dtype=np.uint32)
        keys = rng.integers(0, 50, size=index.bands, dtype=np.uint32)
        expected = next((name for name, s, k in kept
                         if (k == keys).any() and np.count_nonzero(s == sig) / 128 >= 0.8), None)
        assert index.add_or_match(f"r{i}", sig, keys) == expected, i
        if expected is None:
            kept.append((f"r{i}", sig, keys))
    assert len(index) == len(kept) > 40
