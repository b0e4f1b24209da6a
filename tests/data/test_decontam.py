"""Eval-set decontamination by shared word n-grams."""

from __future__ import annotations

import random

import pytest

from tuneforge.data._decontam import Decontaminator, words

EVAL = [
    (
        "golden.jsonl:1",
        "The export to CSV from the reports page has been failing since Tuesday with error 502, "
        "and our finance team needs the monthly numbers by Friday.",
    ),
    (
        "golden.jsonl:2",
        "Please add dark mode to the web dashboard; several of us work night shifts and the white "
        "background is hard on the eyes.",
    ),
    ("golden.jsonl:3", "How do I reset my password?"),  # shorter than one n-gram
]


@pytest.fixture(scope="module")
def decon() -> Decontaminator:
    return Decontaminator(EVAL, ngram=13)


def test_eval_item_inside_a_longer_row_is_caught_with_its_id(decon: Decontaminator) -> None:
    row = (
        "Hi all, forwarding a customer message. " + EVAL[1][1] + " Could we prioritise this for the next release? "
        "Thanks, Ana"
    )
    assert decon.match(row) == "golden.jsonl:2"
    thirteen = " ".join(EVAL[0][1].split()[5:18])  # any 13 consecutive words are enough
    assert decon.match(f"unrelated start {thirteen} unrelated end") == "golden.jsonl:1"


def test_sharing_twelve_of_thirteen_words_is_not_contamination(decon: Decontaminator) -> None:
    eval_words = EVAL[0][1].split()
    twelve = " ".join(eval_words[:12])
    assert decon.match(f"{twelve} something else entirely") is None
    changed = list(eval_words[:13])
    changed[6] = "zzz"  # 13 words in place, one of them different
    assert decon.match(" ".join(changed)) is None
    assert decon.match(" ".join(eval_words[:13])) == "golden.jsonl:1"


def test_punctuation_case_and_spacing_do_not_hide_an_overlap(decon: Decontaminator) -> None:
    disguised = (
        "the EXPORT to csv -- from the Reports Page... has been FAILING since tuesday (with error "
        "502) and our finance team"
    )
    assert decon.match(disguised) == "golden.jsonl:1"
    assert decon.match("PLEASE add dark-mode to the web\n\tdashboard: several of us work night shifts!") == "golden.jsonl:2"


def test_short_eval_items_match_identical_texts(decon: Decontaminator) -> None:
    assert decon.match("how do i reset my password") == "golden.jsonl:3"
    assert decon.match("How do I reset my PASSWORD??") == "golden.jsonl:3"
    assert decon.match("How do I reset my password for the billing portal?") is None
    assert decon.match("reset my password") is None


def test_unrelated_rows_do_not_match(decon: Decontaminator) -> None:
    rng = random.Random(0)
    vocab = sorted({w for _, t in EVAL for w in words(t)})
    # Rows made of the eval items' own vocabulary, shuffled: shared words but no shared 13-gram.
    for _ in range(500):
        assert decon.match(" ".join(rng.choices(vocab, k=60))) is None
    assert decon.match("") is None


def test_len_counts_distinct_indexed_ngrams() -> None:
    text = " ".join(f"w{i}" for i in range(20))  # 20 words: 8 thirteen-grams
    assert len(Decontaminator([("a", text)], ngram=13)) == 8
    assert len(Decontaminator([("a", text), ("b", text.upper())], ngram=13)) == 8  # same n-grams
    assert len(Decontaminator([("a", text), ("short", "two words")], ngram=13)) == 9
    assert len(Decontaminator([("empty", "  ...  ")], ngram=13)) == 0
    assert Decontaminator([("empty", "")]).match("") is None


def test_the_earliest_item_wins_when_several_share_an_ngram() -> None:
    shared = " ".join(f"s{i}" for i in range(13))
    d = Decontaminator([("first", f"alpha {shared}"), ("second", f"{shared} omega"), ("third", "x y z")], ngram=13)
    assert d.match(shared) == "first"
    assert d.match(f"{shared} omega") == "first"
    assert d.match("x y z") == "third"


def test_ngram_size_is_configurable() -> None:
    d = Decontaminator([("g:1", "one two three four five six")], ngram=3)
    assert d.match("zero one two three") == "g:1"
    assert d.match("one two four") is None
    with pytest.raises(ValueError, match="ngram"):
        Decontaminator([], ngram=0)


def test_many_rows_against_many_items() -> None:
    rng = random.Random(1)
    vocab = [f"v{i}" for i in range(20_000)]
    items = [(f"eval:{i}", " ".join(rng.choices(vocab, k=40))) for i in range(2_000)]
    d = Decontaminator(items, ngram=13)
    assert len(d) == 2_000 * 28
    rows = [" ".join(rng.choices(vocab, k=60)) for _ in range(5_000)]
    assert all(d.match(r) is None for r in rows)
    leaked = items[1234][1].split()[10:23]
    assert d.match("prefix " + " ".join(leaked) + " suffix") == "eval:1234"
