"""Two-sample drift statistics: MMD with a permutation p-value, PSI, and prompt text helpers.

Pure numpy except `embed`, which uses the sentence embedder that evaluation already loads (the
bundled all-MiniLM-L6-v2), so prompts are embedded by one model everywhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

# An empty bin would make PSI infinite; this floor is the usual one and keeps one empty bin
# at about 0.1 of PSI for a 10%-probability reference bin.
PSI_EPSILON = 1e-4


@dataclass(frozen=True)
class MmdResult:
    mmd2: float  # biased (V-statistic) squared MMD of the two samples
    p_value: float  # share of label permutations with a statistic >= the observed one (add-one)
    n_reference: int
    n_current: int
    bandwidth: float  # the RBF kernel's squared length scale (median heuristic)


def subsample(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` rows of ``x``, chosen without replacement by a seeded generator."""
    if len(x) <= n:
        return x
    idx = np.random.default_rng(seed).choice(len(x), size=n, replace=False)
    return x[np.sort(idx)]


def mmd_test(reference: np.ndarray, current: np.ndarray, *, permutations: int = 500, seed: int = 0,
             max_samples: int | None = 400) -> MmdResult:
    """Maximum mean discrepancy between two samples (rows are points) with an RBF kernel.

    The bandwidth is the median squared distance of the pooled sample (the median heuristic),
    and the p-value comes from relabelling the pooled sample: under "same distribution" every
    labelling is equally likely, so the test's false-alarm rate is at most alpha by construction.
    """
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(current, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected two 2-D samples of the same width, got {x.shape} and {y.shape}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError("each sample needs at least 2 points")
    if max_samples is not None:
        x, y = subsample(x, max_samples, seed), subsample(y, max_samples, seed + 1)
    pooled = np.concatenate([x, y])
    sq = np.sum(pooled * pooled, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * pooled @ pooled.T, 0.0)
    off = d2[np.triu_indices(len(pooled), k=1)]
    positive = off[off > 0]
    bandwidth = float(np.median(positive)) if len(positive) else 1.0
    k = np.exp(-d2 / bandwidth)

    n, m = len(x), len(y)
    # a^T K a with a = +1/n on the first sample and -1/m on the second is the biased MMD²;
    # all permutations are scored at once as the columns of one label matrix.
    observed = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.permutation(observed) for _ in range(permutations)], axis=1)
    stat = float(observed @ k @ observed)
    perm_stats = np.einsum("ip,ip->p", labels, k @ labels)
    # A small tolerance so ties from floating-point noise count as ">=" (conservative).
    exceed = int(np.sum(perm_stats >= stat - 1e-12))
    return MmdResult(max(stat, 0.0), (exceed + 1) / (permutations + 1), n, m, bandwidth)


def psi(reference: np.ndarray | list[float], current: np.ndarray | list[float], *, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` over reference-quantile bins.

    Bins are cut at the reference's quantiles (duplicates merged, so discrete values such as
    lengths still get sensible bins); each side's bin shares are floored at PSI_EPSILON.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if len(ref) == 0 or len(cur) == 0:
        raise ValueError("PSI needs a non-empty reference and current sample")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_share = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / len(ref)
    cur_share = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1) / len(cur)
    r = np.maximum(ref_share, PSI_EPSILON)
    c = np.maximum(cur_share, PSI_EPSILON)
    return float(np.sum((c - r) * np.log(c / r)))


def embed(texts: list[str], embedder: Any = None) -> np.ndarray:
    """Unit-norm MiniLM embeddings of ``texts`` (one row each), with evaluation's embedder.

    Pass one ``tuneforge.eval.metrics.Embedder`` for several calls: it loads the model once.
    """
    from tuneforge.eval.metrics import Embedder

    return np.asarray((embedder or Embedder()).encode(texts))


# --- prompt text -------------------------------------------------------------------------------

_CHATML = re.compile(r"<\|im_start\|>(system|user|assistant|tool)\n(.*?)(?:<\|im_end\|>|$)", re.DOTALL)


def messages_from_prompt(prompt: str) -> list[dict[str, str]] | None:
    """The turns of a ChatML-rendered prompt (SmolLM2, Qwen and others); None for other templates.

    Request logs written before the raw messages were stored hold only the rendered prompt.
    """
    turns = [{"role": r, "content": c.strip()} for r, c in _CHATML.findall(prompt)]
    turns = [t for t in turns if t["content"] or t["role"] != "assistant"]  # the open generation turn
    return turns or None


def user_text(messages: list[dict[str, Any]] | None) -> str:
    """The user turns of a conversation joined: what traffic drift is measured on.

    The system prompt is left out because it is usually the same for every request, which
    would make all prompts look alike.
    """
    parts = []
    for m in messages or []:
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):  # OpenAI content parts
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            if isinstance(content, str):
                parts.append(content)
    return "\n".join(parts)


def row_messages(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A request-log row's conversation: its stored messages, else parsed from the rendered prompt."""
    raw = row.get("messages")
    if isinstance(raw, str) and raw:
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    if isinstance(raw, list) and raw:
        return raw
    prompt = row.get("prompt")
    return messages_from_prompt(prompt) if isinstance(prompt, str) else None


def row_prompt_text(row: dict[str, Any]) -> str | None:
    """What a logged request asked: its user turns, else the raw prompt (completions endpoint)."""
    text = user_text(row_messages(row))
    if text:
        return text
    prompt = row.get("prompt")
    return prompt if isinstance(prompt, str) and prompt else None
