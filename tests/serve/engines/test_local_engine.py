"""The local engine on a tiny model: batching equivalence, continuous batching, sampling, stop, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from engine_helpers import PROMPTS, collect, greedy, run

from tuneforge.serve.engines._sampling import json_object_end
from tuneforge.serve.engines.base import AdapterSpec, Engine, EngineError, GenerationRequest, SamplingParams
from tuneforge.serve.engines.local import LocalEngine
from tuneforge.workspace import Workspace


@pytest.fixture(scope="module")
def engine(varied_model_dir: Path, adapter_dirs: dict[str, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEngine]:
    """One engine (fp32, so batched and unbatched arithmetic agree) with every test adapter loaded."""
    eng = LocalEngine(str(varied_model_dir), workspace=Workspace(tmp_path_factory.mktemp("engine-ws")),
                      dtype="float32", max_batch=8)

    async def up() -> None:
        await eng.start()
        for name, path in adapter_dirs.items():
            await eng.load_adapter(AdapterSpec(name, path))

    run(up())
    yield eng
    run(eng.stop())


def test_implements_the_engine_protocol(engine: LocalEngine, varied_model_dir: Path) -> None:
    assert isinstance(engine, Engine) and engine.ready()
    assert engine.name == "local" and engine.base_model == varied_model_dir.name
    assert engine.max_context == 2048
    assert engine.count_tokens("Hello there") == len(engine.tokenizer("Hello there")["input_ids"])


def test_greedy_output_equals_hf_generate(engine: LocalEngine, varied_model_dir: Path,
                                          adapter_dirs: dict[str, Path]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    prompt = PROMPTS[0]
    ids = engine.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    base = AutoModelForCausalLM.from_pretrained(varied_model_dir, dtype=torch.float32).eval()
    want_base = base.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
    with_alpha = PeftModel.from_pretrained(base, adapter_dirs["alpha"]).eval()
    want_alpha = with_alpha.generate(input_ids=ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
    assert want_base != want_alpha  # the adapter changes the output, so the next line tests adapter routing
    assert run(greedy(engine, prompt)) == want_base
    assert run(greedy(engine, prompt, "alpha")) == want_alpha


def test_batched_equals_sequential_across_mixed_adapters_and_lengths(engine: LocalEngine) -> None:
    jobs = list(zip(PROMPTS, [None, "alpha", "beta", "gamma", "alpha", None], strict=True))
    jobs += [(PROMPTS[0], a) for a in ("alpha", "beta", "gamma")]  # same prompt, every adapter

    async def alone() -> list[list[int]]:
        return [await greedy(engine, p, a, max_tokens=16) for p, a in jobs]

    async def together() -> list[list[int]]:
        return list(await asyncio.gather(*(greedy(engine, p, a, max_tokens=16) for p, a in jobs)))

    sequential = run(alone())
    batched = run(together())
    assert batched == sequential
    same_prompt = [sequential[0], *sequential[-3:]]
    assert len({tuple(t) for t in same_prompt}) == 4  # base and each adapter generate differently


def test_short_request_is_not_held_behind_a_long_one(engine: LocalEngine) -> None:
    async def scenario() -> tuple[list[str], int]:
        order: list[str] = []
        long_started = asyncio.Event()
        long_tokens = 0

        async def long() -> None:
            nonlocal long_tokens
            async for ev in engine.generate(GenerationRequest("long", PROMPTS[2], SamplingParams(
                    max_tokens=400, temperature=0.0))):
                long_tokens = ev.completion_tokens
                long_started.set()
            order.append("long")

        task = asyncio.create_task(long())
        await long_started.wait()
        outs = await collect(engine, PROMPTS[1], "beta", max_tokens=4, temperature=0.0)
        order.append("short")
        short_done_at = long_tokens
        await task
        assert outs[0].finish == "length" and len(outs[0].tokens) == 4
        return order, short_done_at

    order, long_progress = run(scenario())
    assert order == ["short", "long"]
    assert long_progress < 100  # the short one joined the running batch instead of waiting 400 steps


def test_seeded_sampling_is_reproducible_whatever_the_batch(engine: LocalEngine) -> None:
    params = {"max_tokens": 16, "temperature": 1.0, "top_p": 0.9, "seed": 1234}

    async def alone() -> list[int]:
        return (await collect(engine, PROMPTS[0], "alpha", **params))[0].tokens

    async def crowded() -> list[int]:
        mates = [collect(engine, p, a, max_tokens=20, temperature=0.8, seed=i)
                 for i, (p, a) in enumerate([(PROMPTS[2], None), (PROMPTS[4], "beta"), (PROMPTS[1], "gamma")])]
        results = await asyncio.gather(collect(engine, PROMPTS[0], "alpha", **params), *mates)
        return results[0][0].tokens

    first = run(alone())
    assert run(crowded()) == first
    assert run(alone()) == first
    other = run(collect(engine, PROMPTS[0], "alpha", **{**params, "seed": 99}))[0].tokens
    assert other != first


def test_stop_sequence_trims_and_finishes_with_stop(engine: LocalEngine) -> None:
    full = run(collect(engine, PROMPTS[0], max_tokens=24, temperature=0.0))[0]
    assert full.finish == "length" and len(full.text) > 12
    stop = full.text[8:11]
    cut = full.text.index(stop)
    out = run(collect(engine, PROMPTS[0], max_tokens=24, temperature=0.0, stop=(stop, "never-appears")))[0]
    assert out.finish == "stop"
    assert out.text == full.text[:cut]
    assert stop not in "".join(e.text for e in out.events)
    assert out.tokens == full.tokens[:len(out.tokens)]


def test_n_choices_max_tokens_and_usage(engine: LocalEngine) -> None:
    outs = run(collect(engine, PROMPTS[3], "gamma", n=3, max_tokens=7, temperature=1.0, seed=5))
    assert sorted(outs) == [0, 1, 2]
    for out in outs.values():
        assert out.finish == "length" and len(out.tokens) == 7
        assert [e.completion_tokens for e in out.events] == list(range(1, 8))
        assert all(e.prompt_tokens == engine.count_tokens(PROMPTS[3]) for e in out.events)
    assert len({tuple(o.tokens) for o in outs.values()}) == 3  # each choice samples with its own seed
    first_events = [o.events[0] for o in outs.values()]
    assert sum(e.queue_time_s is not None for e in first_events) == 1  # set once, on the request's first event
    # Choice i with seed s samples like a single choice with seed s + i.
    single = run(collect(engine, PROMPTS[3], "gamma", max_tokens=7, temperature=1.0, seed=6))[0]
    assert single.tokens == outs[1].tokens


def test_logprobs_report_the_model_distribution(engine: LocalEngine, varied_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = run(collect(engine, PROMPTS[0], max_tokens=3, temperature=0.0, logprobs=True, top_logprobs=3))[0]
    assert [len(e.logprobs) for e in out.events] == [1, 1, 1]
    first = out.events[0].logprobs[0]
    ids = engine.tokenizer(PROMPTS[0], return_tensors="pt", add_special_tokens=False).input_ids
    model = AutoModelForCausalLM.from_pretrained(varied_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, -1].float(), dim=-1)
    want = torch.topk(logp, 3)
    assert first.logprob == pytest.approx(float(want.values[0]), abs=1e-4)
    assert [t for t, _ in first.top] == [engine.tokenizer.decode([int(i)]) for i in want.indices]
    assert first.token == first.top[0][0]
    no_lp = run(collect(engine, PROMPTS[0], max_tokens=2, temperature=0.0))[0]
    assert all(e.logprobs == () for e in no_lp.events)


def test_json_mode_steers_to_an_object(engine: LocalEngine) -> None:
    outs = run(collect(engine, PROMPTS[1], json_mode=True, max_tokens=40, temperature=1.0, seed=3, n=4))
    for out in outs.values():
        assert out.text.lstrip().startswith("{")
        if out.finish == "stop":
            assert json_object_end(out.text) == len(out.text)  # ends right after the closing brace
    assert any(out.finish == "stop" for out in outs.values())


def test_json_object_end() -> None:
    assert json_object_end(' {"a": "}", "b": [1, {"c": 2}]} trailing') == 31
    assert json_object_end('{"a": "x\\"}"') is None
    assert json_object_end("no object") is None


def test_bad_requests_raise_before_the_first_event(engine: LocalEngine) -> None:
    async def first_error(request: GenerationRequest) -> EngineError:
        with pytest.raises(EngineError) as info:
            async for _ in engine.generate(request):
                pass
        return info.value

    unknown = run(first_error(GenerationRequest("x", "hi", adapter="nope@1")))
    assert (unknown.status, unknown.code) == (404, "model_not_found")
    too_long = run(first_error(GenerationRequest("x", "hi " * 100, SamplingParams(max_tokens=2000))))
    assert (too_long.status, too_long.code, too_long.param) == (400, "context_length_exceeded", "messages")
    assert "2000" in str(too_long)
    bad = run(first_error(GenerationRequest("x", "hi", SamplingParams(top_p=0.0))))
    assert (bad.status, bad.param) == (400, "top_p")
    assert engine.stats().running == 0 and engine.ready()


def test_stats_count_running_and_waiting(varied_model_dir: Path, tmp_path: Path) -> None:
    async def scenario() -> list[tuple[int, int]]:
        eng = LocalEngine(str(varied_model_dir), workspace=Workspace(tmp_path / "ws"), dtype="float32", max_batch=1)
        await eng.start()
        seen: list[tuple[int, int]] = []
        started = asyncio.Event()

        async def consume(prompt: str) -> None:
            async for _ in eng.generate(GenerationRequest(prompt, prompt, SamplingParams(max_tokens=60))):
                started.set()

        tasks = [asyncio.create_task(consume(p)) for p in PROMPTS[:2]]
        await started.wait()
        s = eng.stats()
        seen.append((s.running, s.waiting))
        await asyncio.gather(*tasks)
        s = eng.stats()
        seen.append((s.running, s.waiting))
        await eng.stop()
        return seen

    assert run(scenario()) == [(1, 1), (0, 0)]


def test_cancelled_request_leaves_the_batch(engine: LocalEngine) -> None:
    async def scenario() -> None:
        stream = engine.generate(GenerationRequest("c", PROMPTS[2], SamplingParams(max_tokens=500), adapter="beta"))
        await anext(stream)
        await stream.aclose()  # the client went away
        for _ in range(200):
            if engine.stats().running == 0 and engine._adapters.refs("beta") == 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"cancelled request still running: {engine.stats()}")

    run(scenario())


def test_stop_drains_in_flight_requests_then_refuses(varied_model_dir: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        eng = LocalEngine(str(varied_model_dir), workspace=Workspace(tmp_path / "ws"), dtype="float32")
        await eng.start()
        started = asyncio.Event()
        got: list[int] = []

        async def consume() -> str | None:
            finish = None
            async for ev in eng.generate(GenerationRequest("d", PROMPTS[0], SamplingParams(max_tokens=50))):
                got.append(ev.completion_tokens)
                finish = ev.finish_reason
                started.set()
            return finish

        task = asyncio.create_task(consume())
        await started.wait()
        await eng.stop()
        assert await task == "length" and got[-1] == 50
        assert not eng.ready()
        with pytest.raises(EngineError) as info:
            await anext(eng.generate(GenerationRequest("e", "hi")))
        assert info.value.status == 503

    run(scenario())
