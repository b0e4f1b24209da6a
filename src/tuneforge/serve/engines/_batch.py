"""The running batch's KV cache: one left-padded DynamicCache, re-shaped as rows join and leave.

Rows have different lengths, so the cache is left-padded: row ``i`` holds its real tokens in the
last ``lengths[i]`` columns, and ``mask`` marks them. Each decode step appends one column for every
row; a joining row is left-padded (with zeros, which the mask hides) to the batch's width, and
columns that are padding in every row are cut when the longest row leaves.

The layers keep spare columns (``_SlackLayer``): transformers' DynamicLayer concatenates on every
step, copying the whole cache per token; writing into slack copies only the new column.
"""

from __future__ import annotations

import functools
from typing import Any

SLACK = 64  # spare columns per layer; a reallocation (full copy) happens once per SLACK steps


def _slack_layer(keys: Any, values: Any) -> Any:
    return _slack_class()(keys, values)


@functools.cache
def _slack_class() -> Any:
    from transformers.cache_utils import DynamicLayer

    class _SlackLayer(DynamicLayer):
        def __init__(self, keys: Any, values: Any) -> None:
            super().__init__()
            self._fill(keys, values)

        def _fill(self, keys: Any, values: Any) -> None:
            b, h, t, d = keys.shape
            self._k = keys.new_empty((b, h, t + SLACK, d))
            self._v = values.new_empty((b, h, t + SLACK, values.shape[-1]))
            self._k[:, :, :t] = keys
            self._v[:, :, :t] = values
            self._n = t
            self.keys, self.values = self._k[:, :, :t], self._v[:, :, :t]
            self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            t = key_states.shape[-2]
            if self._n + t > self._k.shape[2]:
                self._fill(self.keys, self.values)
            self._k[:, :, self._n:self._n + t] = key_states
            self._v[:, :, self._n:self._n + t] = value_states
            self._n += t
            self.keys, self.values = self._k[:, :, :self._n], self._v[:, :, :self._n]
            return self.keys, self.values

    return _SlackLayer


class BatchCache:
    def __init__(self) -> None:
        self.cache: Any = None  # transformers DynamicCache, or None when empty
        self.mask: Any = None  # [rows, width] long, 1 = a real token
        self.rows = 0

    @property
    def width(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def lengths(self) -> Any:
        return self.mask.sum(dim=1)

    def append(self, cache: Any, mask: Any) -> None:
        """Add rows (a prefilled DynamicCache and its [rows, width] mask) at the end of the batch."""
        import torch
        import torch.nn.functional as F  # noqa: N812

        if self.cache is None:
            cache.layers = [_slack_layer(layer.keys, layer.values) for layer in cache.layers]
            self.cache, self.mask, self.rows = cache, mask, int(mask.shape[0])
            return
        width = max(self.width, int(mask.shape[1]))
        mine, theirs = width - self.width, width - int(mask.shape[1])
        self.cache.layers = [
            _slack_layer(torch.cat([F.pad(own.keys, (0, 0, mine, 0)), F.pad(new.keys, (0, 0, theirs, 0))]),
                         torch.cat([F.pad(own.values, (0, 0, mine, 0)), F.pad(new.values, (0, 0, theirs, 0))]))
            for own, new in zip(self.cache.layers, cache.layers, strict=True)
        ]
        self.mask = torch.cat([F.pad(self.mask, (mine, 0)), F.pad(mask, (theirs, 0))])
        self.rows += int(mask.shape[0])

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order) and drop columns that are padding in all of them."""
        import torch

        if not rows:
            self.cache, self.mask, self.rows = None, None, 0
            return
        if rows == list(range(self.rows)):
            return
        index = torch.tensor(rows, dtype=torch.long)
        mask = self.mask.index_select(0, index)
        first = int(mask.any(dim=0).long().argmax())  # first column some row still uses
        self.cache.layers = [_slack_layer(layer.keys.index_select(0, index)[:, :, first:],
                                          layer.values.index_select(0, index)[:, :, first:])
                             for layer in self.cache.layers]
        self.mask = mask[:, first:].contiguous()
        self.rows = len(rows)

    def grow(self) -> None:
        """Account for the column the last forward pass appended to every row."""
        import torch

        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
