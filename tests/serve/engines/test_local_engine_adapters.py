"""Adapter residency in the local engine: LRU, refcounted unload, and refusals that keep it serving."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from engine_helpers import PROMPTS, collect, greedy, make_adapter, run

from tuneforge.serve.engines.base import AdapterSpec, EngineError, GenerationRequest, SamplingParams
from tuneforge.serve.engines.local import LocalEngine
from tuneforge.train._artifacts import META, checksum, file_digests
from tuneforge.workspace import Workspace


def _engine(model: Path, tmp_path: Path, **kw: object) -> LocalEngine:
    return LocalEngine(str(model), workspace=Workspace(tmp_path / "ws"), dtype="float32", **kw)  # type: ignore[arg-type]


async def _refused(eng: LocalEngine, spec: AdapterSpec) -> EngineError:
    before = eng.stats().loaded_adapters
    with pytest.raises(EngineError) as info:
        await eng.load_adapter(spec)
    assert eng.stats().loaded_adapters == before and eng.ready()
    return info.value


def test_lru_evicts_the_least_recently_used_idle_adapter(varied_model_dir: Path, adapter_dirs: dict[str, Path],
                                                         tmp_path: Path) -> None:
    async def scenario() -> None:
        eng = _engine(varied_model_dir, tmp_path, max_loaded_adapters=2)
        await eng.start()
        base_before = await greedy(eng, PROMPTS[0])
        await eng.load_adapter(AdapterSpec("alpha", adapter_dirs["alpha"]))
        await eng.load_adapter(AdapterSpec("beta", adapter_dirs["beta"]))
        alpha_before = await greedy(eng, PROMPTS[0], "alpha")
        await greedy(eng, PROMPTS[1], "alpha")  # alpha is now the most recently used
        await eng.load_adapter(AdapterSpec("gamma", adapter_dirs["gamma"]))
        assert eng.stats().loaded_adapters == ("alpha", "gamma")
        with pytest.raises(EngineError) as info:
            await greedy(eng, PROMPTS[0], "beta")
        assert (info.value.status, info.value.code) == (404, "model_not_found")
        assert await greedy(eng, PROMPTS[0], "alpha") == alpha_before  # eviction left the others intact
        await eng.unload_adapter("alpha")
        await eng.unload_adapter("gamma")
        assert eng.stats().loaded_adapters == ()
        assert await greedy(eng, PROMPTS[0]) == base_before  # no LoRA residue in the base
        await eng.load_adapter(AdapterSpec("beta", adapter_dirs["beta"]))  # reloading after eviction works
        assert await greedy(eng, PROMPTS[0], "beta") != base_before
        await eng.stop()

    run(scenario())


def test_reloading_the_adapter_that_was_active_serves_it_and_not_its_neighbour(
        varied_model_dir: Path, adapter_dirs: dict[str, Path], tmp_path: Path) -> None:
    """A single-adapter step makes its adapter active in PEFT; unloading that adapter moves PEFT's active
    adapter elsewhere, so after a reload the engine must activate it again."""
    async def scenario() -> None:
        eng = _engine(varied_model_dir, tmp_path, max_loaded_adapters=2)
        await eng.start()
        await eng.load_adapter(AdapterSpec("alpha", adapter_dirs["alpha"]))
        await eng.load_adapter(AdapterSpec("beta", adapter_dirs["beta"]))
        beta = await greedy(eng, PROMPTS[0], "beta")
        alpha = await greedy(eng, PROMPTS[0], "alpha")
        assert alpha != beta
        await eng.unload_adapter("alpha")
        await eng.load_adapter(AdapterSpec("alpha", adapter_dirs["alpha"]))
        assert await greedy(eng, PROMPTS[0], "alpha") == alpha
        assert await greedy(eng, PROMPTS[0], "beta") == beta
        await eng.stop()

    run(scenario())


def test_full_table_of_busy_adapters_refuses_a_new_load(varied_model_dir: Path, adapter_dirs: dict[str, Path],
                                                         tmp_path: Path) -> None:
    async def scenario() -> None:
        eng = _engine(varied_model_dir, tmp_path, max_loaded_adapters=1)
        await eng.start()
        await eng.load_adapter(AdapterSpec("alpha", adapter_dirs["alpha"]))
        stream = eng.generate(GenerationRequest("busy", PROMPTS[2], SamplingParams(max_tokens=300), adapter="alpha"))
        await anext(stream)
        err = await _refused(eng, AdapterSpec("beta", adapter_dirs["beta"]))
        assert (err.status, err.code) == (503, "adapter_capacity")
        await stream.aclose()
        await eng.stop()

    run(scenario())


def test_unload_waits_for_in_flight_requests_and_refuses_new_ones(varied_model_dir: Path,
                                                                 adapter_dirs: dict[str, Path], tmp_path: Path) -> None:
    async def scenario() -> None:
        eng = _engine(varied_model_dir, tmp_path)
        await eng.start()
        await eng.load_adapter(AdapterSpec("support@1", adapter_dirs["alpha"]))
        want = await greedy(eng, PROMPTS[0], "support@1", max_tokens=80)
        started = asyncio.Event()

        async def in_flight() -> list[int]:
            tokens: list[int] = []
            async for ev in eng.generate(GenerationRequest("old", PROMPTS[0], SamplingParams(
                    max_tokens=80, temperature=0.0), adapter="support@1")):
                tokens.extend(ev.token_ids)
                started.set()
            return tokens

        old = asyncio.create_task(in_flight())
        await started.wait()
        await eng.load_adapter(AdapterSpec("support@2", adapter_dirs["beta"]))  # the version swap
        unload = asyncio.create_task(eng.unload_adapter("support@1"))
        await asyncio.sleep(0.05)
        with pytest.raises(EngineError) as info:
            await greedy(eng, PROMPTS[1], "support@1")
        assert (info.value.status, info.value.code) == (503, "adapter_unloading")
        assert not unload.done() and not old.done()
        assert await old == want  # the old version finished, untouched by the swap
        await unload
        assert eng.stats().loaded_adapters == ("support@2",)
        with pytest.raises(EngineError) as info:
            await greedy(eng, PROMPTS[1], "support@1")
        assert info.value.status == 404
        await eng.stop()

    run(scenario())


def test_contract_mismatch_is_refused_at_load(varied_model_dir: Path, tiny_model_dir: Path, tmp_path: Path,
                                              copy_adapter) -> None:
    other_base = make_adapter(tiny_model_dir, tmp_path / "other-base", seed=1)
    edited = copy_adapter("alpha")
    meta = json.loads((edited / META).read_text())
    meta["contract"]["chat_template_sha256"] = "0" * 64
    (edited / META).write_text(json.dumps(meta))

    async def scenario() -> None:
        eng = _engine(varied_model_dir, tmp_path)
        await eng.start()
        before = await greedy(eng, PROMPTS[0])
        err = await _refused(eng, AdapterSpec("other", other_base))
        assert (err.status, err.code) == (400, "adapter_contract_mismatch")
        assert "base_weights_sha256" in str(err) and tiny_model_dir.name in str(err)
        err = await _refused(eng, AdapterSpec("edited", edited))
        assert err.code == "adapter_contract_mismatch" and "chat_template_sha256" in str(err)
        assert await greedy(eng, PROMPTS[0]) == before
        await eng.stop()

    run(scenario())


def test_tampered_or_broken_adapters_are_refused_and_the_engine_keeps_serving(
        varied_model_dir: Path, adapter_dirs: dict[str, Path], tmp_path: Path, copy_adapter) -> None:
    tampered = copy_adapter("alpha")
    weights = tampered / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    # Garbage weights with a matching checksum: verification passes, PEFT cannot load them.
    broken = copy_adapter("beta")
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    meta = json.loads((broken / META).read_text())
    meta["files"] = file_digests(broken)
    meta["checksum"] = checksum(meta["files"])
    (broken / META).write_text(json.dumps(meta))

    async def scenario() -> None:
        eng = _engine(varied_model_dir, tmp_path)
        await eng.start()
        await eng.load_adapter(AdapterSpec("gamma", adapter_dirs["gamma"]))
        gamma = await greedy(eng, PROMPTS[0], "gamma")
        err = await _refused(eng, AdapterSpec("tampered", tampered))
        assert (err.status, err.code) == (400, "adapter_checksum_mismatch")
        good = json.loads((adapter_dirs["alpha"] / META).read_text())["checksum"]
        err = await _refused(eng, AdapterSpec("wrong-sum", adapter_dirs["alpha"], checksum="f" * 64))
        assert err.code == "adapter_checksum_mismatch" and good in str(err)
        err = await _refused(eng, AdapterSpec("broken", broken))
        assert (err.status, err.code) == (400, "adapter_invalid")
        err = await _refused(eng, AdapterSpec("missing", tmp_path / "nowhere"))
        assert err.code == "adapter_invalid"
        assert await greedy(eng, PROMPTS[0], "gamma") == gamma
        await eng.load_adapter(AdapterSpec("alpha", adapter_dirs["alpha"], checksum=good))
        assert set(eng.stats().loaded_adapters) == {"gamma", "alpha"}
        outs = await asyncio.gather(collect(eng, PROMPTS[0], "alpha", max_tokens=4, temperature=0.0),
                                    collect(eng, PROMPTS[0], "gamma", max_tokens=4, temperature=0.0))
        assert outs[1][0].tokens == gamma[:4]
        await eng.stop()

    run(scenario())
