"""The local engine on the real bundled model: continuous-batched output equals HF generate."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from engine_helpers import Out, collect, greedy, make_adapter, run

from tuneforge.serve.engines.base import AdapterSpec
from tuneforge.serve.engines.local import LocalEngine
from tuneforge.workspace import Workspace

BUNDLED = "bundled:smollm2-135m-instruct"


@pytest.mark.slow
def test_bundled_mixed_batch_matches_hf_generate(bundled_home: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.models import load_tokenizer, resolve_model

    ws = Workspace(bundled_home)
    resolved = resolve_model(BUNDLED, ws)
    tokenizer = load_tokenizer(resolved)
    adapter = make_adapter(BUNDLED, tmp_path / "support", seed=1, rank=4, ws=ws)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True)
               for q in ("What is the capital of France?", "Write a haiku about tea.", "Say hi.")]

    base = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32).eval()
    want = []
    for p in prompts:
        ids = tokenizer(p, return_tensors="pt", add_special_tokens=False).input_ids
        want.append(base.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1]:].tolist())
    peft = PeftModel.from_pretrained(base, adapter).eval()
    ids = tokenizer(prompts[0], return_tensors="pt", add_special_tokens=False).input_ids
    want_adapter = peft.generate(input_ids=ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1]:].tolist()

    async def scenario() -> tuple[list[list[int]], Out]:
        eng = LocalEngine(BUNDLED, workspace=ws, dtype="float32")
        await eng.start()
        await eng.load_adapter(AdapterSpec("support@1", adapter))
        jobs = [greedy(eng, p, max_tokens=10) for p in prompts] + [greedy(eng, prompts[0], "support@1", 10)]
        got = list(await asyncio.gather(*jobs))
        hi = (await collect(eng, prompts[2], max_tokens=40, temperature=0.0))[0]
        await eng.stop()
        return got, hi

    got, hi = run(scenario())
    # A short answer ends on the end-of-turn token: finish "stop", and the token's text is not sent.
    assert hi.finish == "stop" and hi.tokens[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "<|im_end|>" not in hi.text and hi.text.strip()
    # generate stops at the end-of-turn token; the engine reports it as the finishing token too.
    assert got[:3] == want
    assert got[3] == want_adapter
