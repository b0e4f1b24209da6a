"""Token counts of rendered training texts, as ``tokenizer(texts, add_special_tokens=False)`` gives them.

Tokenizing is the costliest per-row step of ``data prepare`` (about half of it), and rendered
chat texts repeat a lot: the same system prompt in every row, the same prompt in a preference
pair's chosen and rejected renderings, the same newline between turns. The tokenizers library
first cuts a text at its added tokens (``<|im_start|>`` ...) and then encodes each piece between
them on its own, so a text's count is its added tokens plus the counts of those pieces. Pieces
are counted once and remembered.

That holds only where encoding a piece alone gives what encoding it inside the text gives: no
normaliser, pre-tokenizers that split each piece by itself (ByteLevel, Split, Digits), added
tokens matched exactly (no lstrip/rstrip/single_word, none matched after normalising) and
special tokens split out. Any other tokenizer is counted text by text. The first batch is also
counted both ways, and a difference (which the rules above should make impossible) switches
to whole texts for good.

Most of the library's time on a new piece goes to its pre-tokenizer's regular expression, not to
BPE. For GPT-2 style byte-level BPE (a lone ByteLevel pre-tokenizer) a piece is cut into words
here instead, with the library's pattern spelled out for the characters the piece has; each
word's count comes from the BPE model once and is remembered, so a piece costs one
``re.findall`` and a few dictionary lookups (7x faster on support tickets). That is done only
for pieces whose every character is letter, digit, whitespace or other under any Unicode
version either regex engine may use: printable ASCII, tab and newlines, the Latin letters
U+00C0-U+024F (but the signs × and ÷), the quotes, dashes and ellipsis of U+2010-U+2027, and €.
Pieces with other characters go to the library.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

# Pre-tokenizers that work on each piece independently of where it sits in the text.
_LOCAL_PRE_TOKENIZERS = frozenset({"ByteLevel", "Split", "Digits"})
# Pieces remembered per process; cleared when full (the repeated ones come back at once).
_CACHE_SIZE = 1 << 15
_WORD_CACHE_SIZE = 1 << 17

# The letters (\p{L}) among the characters of _SAFE_TEXT; its digits (\p{N}) are 0-9 and its
# whitespace (\s) space, tab and newlines.
_LETTERS = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"
_SAFE_TEXT = re.compile(f"[\\x20-\\x7e\\t\\n\\r{_LETTERS}\u2010-\u2027\u20ac]*")
# The library's ByteLevel pattern, 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+,
# with those classes.
_WORD = re.compile(f"'s|'t|'re|'ve|'m|'ll|'d| ?[{_LETTERS}]+| ?[0-9]+| ?[^\\s{_LETTERS}0-9]+|\\s+(?!\\S)|\\s+")


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte-to-character map: printable Latin-1 bytes stand for themselves, the rest
    (control bytes, space, DEL, NBSP, soft hyphen) for U+0100 onwards, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(0x100 + i) for i, b in enumerate(others)}


# A word's UTF-8 bytes, read as Latin-1 (one character per byte), translated with this.
_BYTE_CHARS = str.maketrans(_byte_chars())


class TokenCounter:
    """Counts tokens of many texts with one tokenizer; see the module docstring."""

    def __init__(self, tokenizer: Any) -> None:
        # The backend in the state transformers' __call__ puts it in before encoding (no
        # truncation or padding, its split_special_tokens setting), called directly: the
        # wrapper would also convert every encoding to lists of ids only for us to count them.
        backend = copy.deepcopy(tokenizer.backend_tokenizer)
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
        self._backend = backend
        self._splitter = _added_token_splitter(backend)
        self._words = _ByteLevelWords.for_backend(backend) if self._splitter is not None else None
        self._cache: dict[str, int] = {}
        self._verified = False

    @property
    def by_piece(self) -> bool:
        """Whether texts are counted piece by piece (else whole)."""
        return self._splitter is not None

    def counts(self, texts: list[str]) -> list[int]:
        if self._splitter is None or not texts:
            return self._whole(texts)
        got = self._by_piece(texts)
        if not self._verified:
            self._verified = True
            if got != self._whole(texts):
                self._splitter = None
                return self._whole(texts)
        return got

    def _whole(self, texts: list[str]) -> list[int]:
        return [len(e) for e in self._backend.encode_batch(texts, add_special_tokens=False)] if texts else []

    def _by_piece(self, texts: list[str]) -> list[int]:
        assert self._splitter is not None
        split = self._splitter.split
        pieces = [split(t) for t in texts]
        cache = self._cache
        if len(cache) > _CACHE_SIZE:
            cache.clear()
        todo = list(dict.fromkeys(p for ps in pieces for p in ps if p not in cache))
        if todo:
            cache.update(zip(todo, self._new_pieces(todo), strict=True))
        # re.split gives n + 1 pieces around n added tokens, each of which is one token.
        return [len(ps) - 1 + sum(cache[p] for p in ps) for ps in pieces]

    def _new_pieces(self, pieces: list[str]) -> list[int]:
        if self._words is None:
            return self._whole(pieces)
        got = [self._words.count(p) for p in pieces]
        whole = iter(self._whole([p for p, n in zip(pieces, got, strict=True) if n is None]))
        return [n if n is not None else next(whole) for n in got]


class _ByteLevelWords:
    """Counts a byte-level BPE piece word by word; see the module docstring."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._cache: dict[str, int] = {}

    @classmethod
    def for_backend(cls, backend: Any) -> _ByteLevelWords | None:
        """One for ``backend`` if it is GPT-2 style byte-level BPE, else None."""
        if backend.pre_tokenizer is None or type(backend.model).__name__ != "BPE" or backend.model.dropout:
            return None
        pre = json.loads(backend.pre_tokenizer.__getstate__())
        if pre != {**pre, "type": "ByteLevel", "add_prefix_space": False, "use_regex": True}:
            return None
        return cls(backend.model)

    def count(self, piece: str) -> int | None:
        """Tokens in ``piece``, or None if it has characters this path does not handle."""
        if not _SAFE_TEXT.fullmatch(piece):
            return None
        cache = self._cache
        if len(cache) > _WORD_CACHE_SIZE:
            cache.clear()
        total = 0
        for word in _WORD.findall(piece):
            n = cache.get(word)
            if n is None:
                n = cache[word] = len(self._model.tokenize(word.encode().decode("latin-1").translate(_BYTE_CHARS)))
            total += n
        return total


def _added_token_splitter(backend: Any) -> re.Pattern[str] | None:
    """A pattern matching the added tokens as the tokenizer cuts them, or None if counting by
    piece would not be exact for this tokenizer."""
    if backend.encode_special_tokens or backend.normalizer is not None:
        return None
    if backend.pre_tokenizer is not None:
        pre = json.loads(backend.pre_tokenizer.__getstate__())
        steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
        if not all(step.get("type") in _LOCAL_PRE_TOKENIZERS for step in steps):
            return None
    added = list(backend.get_added_tokens_decoder().values())
    if any(t.lstrip or t.rstrip or t.single_word or t.normalized for t in added):
        return None
    contents = sorted({t.content for t in added if t.content}, key=len, reverse=True)
    if not contents:
        return None
    # Alternatives longest first: at each position the longest token wins, as in the library.
    return re.compile("|".join(map(re.escape, contents)))
