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
            cache.update(zip(todo, self._whole(todo), strict=True))
        # re.split gives n + 1 pieces around n added tokens, each of which is one token.
        return [len(ps) - 1 + sum(cache[p] for p in ps) for ps in pieces]


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
