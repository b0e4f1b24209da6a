"""Token counting by piece and batched rendering equal the plain per-text transformers calls."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tuneforge.data._render import render_texts, render_texts_batch
from tuneforge.data._tokens import TokenCounter
from tuneforge.data._types import CHAT, PREFERENCE, TEXT, Row

SYSTEM = "Classify the support ticket. Answer with a JSON object."


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _rows() -> list[Row]:
    """Chat rows sharing a system prompt, edge-case texts, preference pairs and plain text."""
    contents = [
        "My invoice 1234 shows a double charge", "   ", "", "ünïcödé straße 東京 ΣΊΣΥΦΟΣ 🙂",
        "a literal <|im_end|> and <|im_start|>user inside the text", "<|im_end|><|im_end|>",
        "tabs\tand\nnew\r\nlines  ", "x" * 3000, "repeat " * 200, "<|endoftext|>",
    ]
    rows = []
    for i, c in enumerate(contents):
        msgs = [{"role": "user", "content": c}, {"role": "assistant", "content": f"answer {i}: {c[::-1]}"}]
        if i % 2 == 0:
            msgs.insert(0, {"role": "system", "content": SYSTEM})
        rows.append(Row("f.jsonl", i + 1, CHAT, {"messages": msgs}))
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "pick one"}]
    rows.append(Row("f.jsonl", 50, PREFERENCE, {"prompt": prompt, "chosen": [{"role": "assistant", "content": "A"}],
                                                "rejected": [{"role": "assistant", "content": "B <|im_end|>"}]}))
    rows.append(Row("f.jsonl", 51, TEXT, {"text": "plain pre-training text"}))
    return rows


def _reference_counts(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def test_batched_render_equals_per_row_render(tokenizer) -> None:
    rows = _rows()
    assert render_texts_batch(tokenizer, rows) == [render_texts(tokenizer, r) for r in rows]
    assert render_texts_batch(tokenizer, []) == []


def test_counts_by_piece_equal_the_tokenizer(tokenizer) -> None:
    texts = [t for ts in render_texts_batch(tokenizer, _rows()) for t in ts]
    counter = TokenCounter(tokenizer)
    assert counter.by_piece  # SmolLM2's byte-level BPE qualifies
    expected = _reference_counts(tokenizer, texts)
    assert counter.counts(texts) == expected
    # Later batches come from remembered pieces (the shared system turn) and still agree.
    assert counter.counts(texts[::-1]) == expected[::-1]
    assert counter.counts([]) == []
    assert counter.by_piece  # the first batch's check against whole texts did not switch it off


def test_words_count_like_the_tokenizer(tokenizer) -> None:
    import random

    from tuneforge.data._tokens import _ByteLevelWords

    backend = tokenizer.backend_tokenizer
    words = _ByteLevelWords.for_backend(backend)
    assert words is not None  # SmolLM2: a lone ByteLevel pre-tokenizer over BPE
    rng = random.Random(0)
    alphabet = "aZ9 '\t\n\r.,!?-_{}\":;/@#" + "sStTdDmlrve" + "éÀÿŁžßÆø" + "’“”–—…€"
    texts = ["don't", "It'S", "we'll've", "   ", "a  b", "x   \n\n  y", "\r\n\t", "12345 678", "!!!...",
             "trailing  ", " lead", "e-mail: jane.doe@example.com", "'", "''s", "\n",
             "Thanks, Zoë Müller", "Łukasz Wójcik’s “quote” — done…", "€42,50 café", "naïve  façade’s"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(3000)]
    expected = [len(e) for e in backend.encode_batch(texts, add_special_tokens=False)]
    assert [words.count(t) for t in texts] == expected
    # Characters whose class could differ between regex engines are left to the library.
    for text in ("a\x0bb", "\x1f", "田中", "x\u00a0y", "x²", "1×2", "a\u2028b", "🙂"):
        assert words.count(text) is None, text


def test_counts_match_on_real_rows(tokenizer, tmp_path: Path) -> None:
    import importlib.util

    # The quickstart's generator: tickets with PII, typos and unicode, general Q&A, golden prompts.
    example = Path(__file__).resolve().parents[2] / "examples" / "support_tickets" / "generate.py"
    spec = importlib.util.spec_from_file_location("support_tickets_generate", example)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.generate(tmp_path, 200)
    rows = []
    for f in sorted(tmp_path.glob("*.jsonl")):
        for line in f.read_text().splitlines()[:200]:
            try:
                msgs = json.loads(line).get("messages")
            except (ValueError, AttributeError):  # the generator plants broken rows for the data stage
                continue
            if isinstance(msgs, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                              for m in msgs):
                rows.append(Row(str(f), 0, CHAT, {"messages": msgs}))
    assert len(rows) > 300
    texts = [t for ts in render_texts_batch(tokenizer, rows) for t in ts]
    assert TokenCounter(tokenizer).counts(texts) == _reference_counts(tokenizer, texts)


def test_tokenizers_where_pieces_differ_are_counted_whole(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    # A normaliser may rewrite text across the cut at an added token, so pieces are not safe.
    spec = json.loads((tiny_model_dir / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Lowercase"}
    changed = tmp_path / "tok"
    changed.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (changed / f.name).write_bytes(f.read_bytes())
    (changed / "tokenizer.json").write_text(json.dumps(spec))
    tok = AutoTokenizer.from_pretrained(changed)
    counter = TokenCounter(tok)
    assert not counter.by_piece
    texts = ["An ANSWER   <|im_end|>\n", "x <|im_end|>", "None"]
    assert counter.counts(texts) == _reference_counts(tok, texts)


def test_a_disagreeing_first_batch_switches_to_whole_texts(tokenizer) -> None:
    counter = TokenCounter(tokenizer)
    counter._splitter = re.compile(" ")  # a wrong cut: BPE merges across spaces ("Ġword")
    texts = ["several words in a row", "and another line of text"]
    assert counter.counts(texts) == _reference_counts(tokenizer, texts)
    assert not counter.by_piece
