"""Helpers shared by the local engine tests: run a request and gather its choices."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.serve.engines.base import GenerationEvent, GenerationRequest, SamplingParams
from tuneforge.workspace import Workspace

_ids = itertools.count()

PROMPTS = [
    "Ticket 3: my order 21 is late",
    "Hi",
    "The quick brown fox jumps over the lazy dog while the cat watches from the window sill",
    "Refund please",
    "Where is my parcel? It was due on Monday and the tracking page has not changed since",
    "ok",
]


@dataclass
class Out:
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish: str | None = None
    events: list[GenerationEvent] = field(default_factory=list)


async def collect(engine: Any, prompt: str, adapter: str | None = None, **params: Any) -> dict[int, Out]:
    request = GenerationRequest(f"t{next(_ids)}", prompt, SamplingParams(**params), adapter=adapter)
    outs: dict[int, Out] = {}
    async for ev in engine.generate(request):
        out = outs.setdefault(ev.index, Out())
        assert out.finish is None, "an event arrived after its choice finished"
        out.tokens.extend(ev.token_ids)
        out.text += ev.text
        out.finish = ev.finish_reason
        out.events.append(ev)
    return outs


async def greedy(engine: Any, prompt: str, adapter: str | None = None, max_tokens: int = 12) -> list[int]:
    return (await collect(engine, prompt, adapter, max_tokens=max_tokens, temperature=0.0))[0].tokens


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def make_adapter(base: Path | str, out: Path, *, seed: int, rank: int = 8, ws: Workspace | None = None) -> Path:
    """A LoRA adapter directory as training writes it (PEFT files, tokenizer, tuneforge.json with the
    base's contract and file checksums), with random non-zero weights so it changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.models import load_contract, load_tokenizer, resolve_model
    from tuneforge.train._artifacts import META, checksum, file_digests

    resolved = resolve_model(str(base), ws or Workspace(out.parent / f".ws-{out.name}"))
    tokenizer = load_tokenizer(resolved)
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32),
                           LoraConfig(r=rank, lora_alpha=2 * rank, init_lora_weights=False,
                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    digests = file_digests(out)
    meta = {"kind": "adapter", "name": out.name,
            "base_model": {"ref": resolved.ref, "name": resolved.name, "identity": resolved.identity},
            "contract": load_contract(resolved, tokenizer).to_dict(), "files": digests,
            "checksum": checksum(digests)}
    (out / META).write_text(json.dumps(meta, indent=2))
    return out
