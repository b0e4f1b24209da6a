"""The vllm engine: the OpenAI-SDK contract suite against a gateway over a real vLLM server (CPU
build, bundled model), runtime adapters, a refused adapter, crash → 503 → recovery, clean stop.

One vLLM server is started for the whole module. The contract tests are the ones the local engine
runs (imported from test_openai_contract), resolved against this module's fixtures: ``server``,
``registered`` and the key config are replaced here by their vLLM counterparts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from serve_helpers import API_KEY, ENV, make_adapter
from test_openai_contract import (  # noqa: F401 - collected here, run against vLLM
    LIMITED_KEY,
    MSG,
    test_400_names_the_field,
    test_401_without_or_with_a_wrong_key,
    test_404_unknown_model_and_version,
    test_429_per_key_request_limit_with_retry_after,
    test_chat_names_the_served_version_and_uses_the_adapters_template,
    test_completions_greedy_is_deterministic_and_n_gives_n_choices,
    test_json_object_response_format,
    test_logprobs,
    test_metrics_and_request_log,
    test_prompt_longer_than_the_context,
    test_request_id_is_echoed_or_generated,
    test_stop_sequence_cuts_the_text,
    test_streaming_with_usage,
)

from tuneforge.config import load_config
from tuneforge.serve.auth import hash_key
from tuneforge.serve.server import ServerThread, build_app
from tuneforge.workspace import Workspace

BUNDLED = "bundled:smollm2-135m-instruct"
BASE = "smollm2-135m-instruct"
REPO = Path(__file__).resolve().parents[2]
HAS_VLLM = bool(os.environ.get("TUNEFORGE_VLLM_PYTHON")) or (REPO / ".venv-vllm" / "bin" / "python").is_file()

pytestmark = [
    pytest.mark.slow,
    # In CI the environment must exist (`make test` builds it): there the tests run and fail loudly.
    pytest.mark.skipif(not HAS_VLLM and os.environ.get("CI") != "true",
                       reason="no .venv-vllm here: run `make vllm-env` to test the vllm engine"),
]


def vllm_cfg(*overrides: str) -> Any:
    return load_config(None, [
        f"model.base={BUNDLED}", "serve.engine=vllm", "serve.registry_poll_s=0.2", "serve.shutdown_timeout_s=5",
        "serve.vllm.kv_cache_gib=1", "serve.vllm.max_num_seqs=8", "serve.vllm.health_interval_s=0.5", *overrides])


def linked_workspace(bundled_home: Path, root: Path) -> Workspace:
    """A workspace of its own (registry, logs) sharing the session's converted bundled model."""
    from tuneforge.models import resolve_model

    shared = resolve_model(BUNDLED, Workspace.from_env(bundled_home))
    ws = Workspace.from_env(root)
    ws.models_dir.mkdir(parents=True, exist_ok=True)
    (ws.models_dir / shared.path.name).symlink_to(shared.path, target_is_directory=True)
    return ws


@pytest.fixture(scope="module")
def vllm_ws(bundled_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return linked_workspace(bundled_home, tmp_path_factory.mktemp("vllm-home"))


@pytest.fixture(scope="module")
def registered(vllm_ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """As the local contract tests have it, on the bundled base: support@1 (production), support@2 (canary)."""
    from tuneforge.registry import Registry

    registry = Registry(vllm_ws, gated_aliases=[])
    paths = {}
    for seed in (1, 2):
        # make_adapter resolves str(base): the bundled reference, so the contract names the bundled base
        path = make_adapter(Path(BUNDLED), tmp_path_factory.mktemp(f"vllm-adapter-{seed}") / "a", seed, vllm_ws)
        paths[registry.register(path, "support").version] = path
    registry.promote("support", 1, "production", force=True, reason="test")
    registry.promote("support", 2, "canary", force=True, reason="test")
    return {"registry": registry, "paths": paths}


@pytest.fixture(scope="module")
def server(vllm_ws: Workspace, registered: dict[str, Any]) -> Iterator[ServerThread]:
    cfg = vllm_cfg(f'serve.keys=[{{id: limited, sha256: "{hash_key(LIMITED_KEY)}", requests_per_minute: 2}}]',
                   "serve.price_per_1k_prompt_tokens=1.0")
    srv = ServerThread(build_app(cfg, vllm_ws, environ=ENV), cfg)
    try:
        yield srv.start(timeout=900)
    finally:
        srv.stop()
        engine = engine_of(srv)
        if engine.process is not None:  # a no-op after a clean stop; otherwise no vLLM outlives the module
            engine.process.kill()


@pytest.fixture
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


def engine_of(server: ServerThread) -> Any:
    return server.app.state.gateway.engine


def on_loop(server: ServerThread, coro: Any, timeout: float = 120) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, server.app.state.gateway.loop).result(timeout)


def vllm_models(server: ServerThread) -> set[str]:
    """What the vLLM process itself serves (not the gateway's catalog)."""
    engine = engine_of(server)
    return {m["id"] for m in httpx.get(engine.process.url + "/v1/models", timeout=30).json()["data"]}


def group_gone(pgid: int, within_s: float = 20.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_models_list_names_the_bundled_base_and_versions(client: openai.OpenAI, server: ServerThread) -> None:
    cards = {m.id: m.model_dump() for m in client.models.list().data}
    assert {BASE, BUNDLED, "support", "support@1", "support@2", "support@production"} <= set(cards)
    assert cards["support@1"]["parent"] == BASE and cards["support@canary"]["tuneforge"]["version"] == 2
    assert engine_of(server).name == "vllm" and BASE in vllm_models(server)


def test_adapters_load_at_runtime_and_change_the_output(client: openai.OpenAI, server: ServerThread) -> None:
    engine = engine_of(server)
    if "support@2" in engine.stats().loaded_adapters:  # an earlier test used it
        on_loop(server, engine.unload_adapter("support@2"))
    assert "support@2" not in vllm_models(server)
    base = client.completions.create(model=BASE, prompt="Order 12 is", max_tokens=6, temperature=0)
    tuned = client.completions.create(model="support@2", prompt="Order 12 is", max_tokens=6, temperature=0)
    assert tuned.model == "support@2" and base.model == BASE
    assert "support@2" in vllm_models(server) and "support@2" in engine.stats().loaded_adapters
    assert tuned.choices[0].text != base.choices[0].text  # the adapter's weights are in use
    on_loop(server, engine.unload_adapter("support@2"))
    assert "support@2" not in vllm_models(server)
    # the gateway loads it again on demand, with the same greedy output
    again = client.completions.create(model="support@2", prompt="Order 12 is", max_tokens=6, temperature=0)
    assert again.choices[0].text == tuned.choices[0].text


def test_adapter_for_another_base_is_refused_and_the_server_keeps_serving(
        client: openai.OpenAI, server: ServerThread, registered: dict[str, Any], vllm_ws: Workspace,
        tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    wrong = make_adapter(tiny_model_dir, tmp_path_factory.mktemp("tiny-adapter") / "a", 3, vllm_ws)
    registered["registry"].register(wrong, "tinyfit")
    httpx.post(server.url + "/admin/refresh", headers={"authorization": f"Bearer {ENV['TUNEFORGE_ADMIN_KEY']}"})
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tinyfit@1", messages=MSG, max_tokens=2)
    assert err.value.body["code"] == "adapter_contract_mismatch"
    assert "does not match the served base" in err.value.body["message"]
    assert "tinyfit@1" not in vllm_models(server)  # refused before vLLM saw it
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert client.chat.completions.create(model="support@1", messages=MSG, max_tokens=2).choices


def test_an_adapter_from_tuneforge_train_loads_in_vllm(client: openai.OpenAI, server: ServerThread,
                                                       registered: dict[str, Any], vllm_ws: Workspace,
                                                       tmp_path: Path) -> None:
    """The other adapters here are built with PEFT directly; this one goes prepare → train → register."""
    import json

    from tuneforge.data import prepare
    from tuneforge.train import train

    rows = [{"messages": [{"role": "user", "content": f"Where is my order {i}?"},
                          {"role": "assistant", "content": f"Order {i} ships tomorrow."}]} for i in range(40)]
    (tmp_path / "orders.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = vllm_cfg("data.pii.mode=off", "data.dedup.near=false", "train.max_steps=4", "train.batch_size=4",
                   "train.lr=1e-2", "train.save_every_steps=null", "train.lora.dropout=0.0")
    dataset = prepare(cfg, [str(tmp_path / "orders.jsonl")], workspace=vllm_ws)
    adapter = train(cfg, data=dataset, workspace=vllm_ws, out=tmp_path / "trained").path
    registered["registry"].register(adapter, "orders")
    httpx.post(server.url + "/admin/refresh", headers={"authorization": f"Bearer {ENV['TUNEFORGE_ADMIN_KEY']}"})
    ask = [{"role": "user", "content": "Where is my order 977?"}]
    base = client.chat.completions.create(model=BASE, messages=ask, max_tokens=8, temperature=0)
    tuned = client.chat.completions.create(model="orders@1", messages=ask, max_tokens=8, temperature=0)
    assert "orders@1" in vllm_models(server)  # served by vLLM itself, all-linear LoRA from train()
    assert tuned.choices[0].message.content != base.choices[0].message.content
    assert tuned.choices[0].message.content.startswith("Order ")  # the trained answer's form


def test_adapter_files_changed_after_registration_are_refused(server: ServerThread,
                                                              registered: dict[str, Any]) -> None:
    from tuneforge.serve.engines.base import AdapterSpec, EngineError

    engine = engine_of(server)
    spec = AdapterSpec("forged@1", registered["paths"][1], checksum="0" * 64)
    with pytest.raises(EngineError) as err:
        on_loop(server, engine.load_adapter(spec))
    assert err.value.status == 400 and err.value.code == "adapter_checksum_mismatch"
    assert "forged@1" not in engine.stats().loaded_adapters and engine.ready()


def test_crash_gives_503_without_hanging_then_recovers(client: openai.OpenAI, server: ServerThread) -> None:
    engine = engine_of(server)
    client.chat.completions.create(model="support@1", messages=MSG, max_tokens=1)
    assert "support@1" in engine.stats().loaded_adapters
    old_pid = engine.process.pid
    # a request in flight when the engine dies ends with an error, it does not hang
    outcome: dict[str, Any] = {}

    def stream_long() -> None:
        try:
            for _ in client.completions.create(model="support@1", prompt="Tell a long story:", max_tokens=1500,
                                               temperature=0.8, stream=True):
                outcome.setdefault("first", time.monotonic())
            outcome["result"] = "completed"
        except openai.APIError as exc:
            outcome["result"] = exc
        outcome["end"] = time.monotonic()

    reader = threading.Thread(target=stream_long, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while "first" not in outcome and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "first" in outcome, "the stream never started"
    os.kill(old_pid, signal.SIGKILL)
    killed = time.monotonic()
    t0 = time.monotonic()
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="support@1", messages=MSG, max_tokens=2)
    assert err.value.status_code == 503 and time.monotonic() - t0 < 5
    assert httpx.get(server.url + "/readyz").status_code == 503
    reader.join(30)
    assert not reader.is_alive(), "the in-flight stream hung after the crash"
    assert isinstance(outcome["result"], openai.APIError) and outcome["end"] - killed < 15, outcome
    assert group_gone(old_pid), "vLLM's engine processes outlived the crashed server"

    deadline = time.monotonic() + 600
    while httpx.get(server.url + "/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert engine.ready() and engine.process.pid != old_pid
    assert "support@1" in vllm_models(server)  # resident adapters were loaded again
    resp = client.chat.completions.create(model="support@1", messages=MSG, max_tokens=3, temperature=0)
    assert resp.model == "support@1" and resp.usage.completion_tokens == 3


def test_startup_failure_quotes_the_log(bundled_home: Path, tmp_path: Path) -> None:
    from tuneforge.serve.engines.vllm import VllmEngine
    from tuneforge.serve.server import ServeError

    ws = linked_workspace(bundled_home, tmp_path / "home")
    # an interpreter without vllm: the server exits at once, and the error says why
    engine = VllmEngine(BUNDLED, workspace=ws, cfg=vllm_cfg(f"serve.vllm.python={sys.executable}"))
    with pytest.raises(ServeError) as err:
        asyncio.run(engine.start())
    assert "No module named 'vllm'" in str(err.value) and str(ws.root / "serve" / "vllm.log") in str(err.value)
    assert not engine.ready() and engine.process is None
    with pytest.raises(ServeError) as err:  # a wrong setting fails at construction, before any server starts
        VllmEngine(BUNDLED, workspace=ws, cfg=vllm_cfg(f"serve.vllm.python={tmp_path / 'nope'}"))
    assert err.value.where == "serve.vllm.python" and "make vllm-env" in str(err.value)


def test_stop_leaves_no_process(server: ServerThread) -> None:
    engine = engine_of(server)
    pgid = engine.process.pid
    server.stop()
    assert group_gone(pgid)
    assert not engine.ready()


def test_restarts_are_bounded_within_a_window(tmp_path: Path) -> None:
    from tuneforge.serve.engines._vllm_process import LaunchSpec, VllmProcess

    proc = VllmProcess(LaunchSpec(Path(sys.executable), tmp_path, BASE, vllm_cfg().serve.vllm, tmp_path / "log"))
    assert [proc.may_restart(2, window_s=0.5) for _ in range(3)] == [True, True, False]
    time.sleep(0.6)  # the window has passed: a crash long after the last ones may restart again
    assert proc.may_restart(2, window_s=0.5)
    assert not VllmProcess(proc.spec).may_restart(0)  # restart_limit 0: never
