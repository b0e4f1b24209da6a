"""Prometheus metrics with vLLM's names (``vllm:`` becomes ``tuneforge:``) and model/version/variant labels.

Each app owns its CollectorRegistry, so two servers in one process (tests) never share counters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LABELS = ("model", "version", "variant")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class Labelled:
    """One model/version/variant's children of the per-version metric families."""

    ttft: Any
    itl: Any
    e2e: Any
    queue: Any
    prompt_tokens: Any
    generation_tokens: Any


class ServeMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram("tuneforge:time_to_first_token_seconds", "Time to first token.",
                              LABELS, buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("tuneforge:time_per_output_token_seconds", "Inter-token latency.",
                             LABELS, buckets=_TOKEN_BUCKETS, registry=r)
        self.e2e = Histogram("tuneforge:e2e_request_latency_seconds", "End-to-end request latency.",
                             LABELS, buckets=_LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("tuneforge:request_queue_time_seconds", "Time waiting for an engine slot.",
                               LABELS, buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("tuneforge:prompt_tokens", "Prompt tokens processed.", LABELS, registry=r)
        self.generation_tokens = Counter("tuneforge:generation_tokens", "Tokens generated.", LABELS,
                                         registry=r)
        self.success = Counter("tuneforge:request_success", "Finished requests by finish reason.",
                               (*LABELS, "finished_reason"), registry=r)
        self.requests = Counter("tuneforge:requests", "HTTP requests by endpoint and status.",
                                ("endpoint", "status"), registry=r)
        self.running = Gauge("tuneforge:num_requests_running", "Requests being generated.", registry=r)
        self.waiting = Gauge("tuneforge:num_requests_waiting", "Requests waiting for the engine.", registry=r)
        self.adapters = Gauge("tuneforge:lora_adapters_loaded", "Adapters resident in the engine.", registry=r)
        self._engine: Any = None
        self._children: dict[tuple[str, str, str], Labelled] = {}

    def of(self, model: str, version: str, variant: str) -> Labelled:
        """The per-version children, looked up in the metric families once per label set rather than
        on every request (each ``labels()`` call takes a lock and builds the key again)."""
        key = (model, version, variant)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = Labelled(
                self.ttft.labels(*key), self.itl.labels(*key), self.e2e.labels(*key), self.queue.labels(*key),
                self.prompt_tokens.labels(*key), self.generation_tokens.labels(*key))
        return found

    def watch_engine(self, engine: Any) -> None:
        self._engine = engine

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if self._engine is not None:
            try:
                stats = self._engine.stats()
                self.running.set(stats.running)
                self.waiting.set(stats.waiting)
                self.adapters.set(len(stats.loaded_adapters))
            except Exception:  # a stopped engine still lets /metrics answer
                pass
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
