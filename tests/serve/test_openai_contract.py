"""Contract tests: the official openai SDK against a running gateway (real LocalEngine, tiny model)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from serve_helpers import API_KEY

from tuneforge.serve.auth import hash_key
from tuneforge.serve.engines.local import LocalEngine
from tuneforge.serve.server import ServerThread, build_app

LIMITED_KEY = "sk-test-limited"
MSG = [{"role": "user", "content": "Where is my order?"}]


@pytest.fixture(scope="module")
def server(serve_ws: Any, make_cfg: Any, registered: Any) -> Iterator[ServerThread]:
    from serve_helpers import ENV

    cfg = make_cfg(f'serve.keys=[{{id: limited, sha256: "{hash_key(LIMITED_KEY)}", requests_per_minute: 2}}]',
                   "serve.price_per_1k_prompt_tokens=1.0")
    srv = ServerThread(build_app(cfg, serve_ws, environ=ENV), cfg).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


def test_models_list_has_base_versions_aliases_and_lineage(client: openai.OpenAI, server: ServerThread,
                                                          tiny_model_dir: Any) -> None:
    cards = {m.id: m.model_dump() for m in client.models.list().data}
    base = tiny_model_dir.name
    assert {base, "support", "support@1", "support@2", "support@production", "support@canary"} <= set(cards)
    v1 = cards["support@1"]
    assert v1["parent"] == base and v1["tuneforge"]["version"] == 1
    assert v1["tuneforge"]["dataset_fingerprint"] == "1" * 64  # from the adapter's tuneforge.json
    assert cards["support@canary"]["tuneforge"]["version"] == 2
    assert cards["support"]["tuneforge"]["routing"]["weights"] == {"production": 100.0}
    assert client.models.retrieve("support@production").model_dump()["tuneforge"]["version"] == 1


def test_chat_names_the_served_version_and_uses_the_adapters_template(client: openai.OpenAI,
                                                                      registered: Any) -> None:
    raw = client.chat.completions.with_raw_response.create(model="support@production", messages=MSG,
                                                           max_tokens=4, temperature=0)
    resp = raw.parse()
    assert resp.model == "support@1"
    assert raw.headers["x-tuneforge-variant"] == "production" and raw.headers["x-tuneforge-version"] == "1"
    assert resp.choices[0].message.role == "assistant"
    assert resp.usage.completion_tokens == 4 and resp.choices[0].finish_reason == "length"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(registered["paths"][1])
    rendered = tok.apply_chat_template(MSG, tokenize=False, add_generation_prompt=True)
    assert resp.usage.prompt_tokens == len(tok(rendered, add_special_tokens=False)["input_ids"])
    # The bare name follows the default policy: the production alias.
    assert client.chat.completions.create(model="support", messages=MSG, max_tokens=1).model == "support@1"


def test_completions_greedy_is_deterministic_and_n_gives_n_choices(client: openai.OpenAI) -> None:
    a = client.completions.create(model="support@2", prompt="Order 12 is", max_tokens=6, temperature=0)
    b = client.completions.create(model="support@canary", prompt="Order 12 is", max_tokens=6, temperature=0)
    assert a.model == b.model == "support@2"
    assert a.choices[0].text == b.choices[0].text and a.choices[0].text
    many = client.chat.completions.create(model="support@1", messages=MSG, max_tokens=3, n=3, seed=7)
    assert sorted(c.index for c in many.choices) == [0, 1, 2]
    assert many.usage.completion_tokens == 9


def test_streaming_with_usage(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="support@1", messages=MSG, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model="support@1", messages=MSG, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.model == "support@1" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    # after the role chunk, every chunk carries text or the finish reason (an engine's "accepted"
    # marker, sent before the first token, never reaches the client)
    assert all(c.choices[0].delta.content or c.choices[0].finish_reason for c in chunks[1:] if c.choices)
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 8
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    # completions stream too, ending with [DONE] (the SDK stops there)
    parts = list(client.completions.create(model="support@2", prompt="Hi", max_tokens=3, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices)
    assert all(p.choices[0].text or p.choices[0].finish_reason for p in parts if p.choices)


def test_stop_sequence_cuts_the_text(client: openai.OpenAI) -> None:
    full = client.completions.create(model="support@1", prompt="Tickets:", max_tokens=12, temperature=0)
    text = full.choices[0].text
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop.strip(), f"greedy text too uniform to pick a stop from: {text!r}"
    cut = client.completions.create(model="support@1", prompt="Tickets:", max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_json_object_response_format(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="support@1", messages=[{"role": "user", "content": "JSON please"}],
                                          max_tokens=12, response_format={"type": "json_object"}, seed=0)
    content = resp.choices[0].message.content
    assert content.lstrip().startswith("{"), content
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="support@1", messages=MSG, max_tokens=2, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})
    assert err.value.body["param"] == "response_format"


def test_logprobs(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="support@1", messages=MSG, max_tokens=3, temperature=0,
                                          logprobs=True, top_logprobs=2)
    content = resp.choices[0].logprobs.content
    assert len(content) == 3 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    assert "".join(t.token for t in content) == resp.choices[0].message.content
    comp = client.completions.create(model="support@1", prompt="Hi", max_tokens=2, logprobs=1)
    assert len(comp.choices[0].logprobs.tokens) == 2


def test_request_id_is_echoed_or_generated(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="support@1", messages=MSG, max_tokens=1,
                                                           extra_headers={"x-request-id": "my-req-42"})
    assert raw.headers["x-request-id"] == "my-req-42"
    raw = client.completions.with_raw_response.create(model="support@1", prompt="x", max_tokens=1)
    assert raw.headers["x-request-id"].startswith("req-")
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="nope", prompt="x", extra_headers={"x-request-id": "err-1"})
    assert err.value.response.headers["x-request-id"] == "err-1"


def test_400_names_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="support@1", messages=MSG, temperature=5)
    assert err.value.body["param"] == "temperature" and err.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="support@1", messages=[])
    assert err.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="support@1", messages=[{"role": "wizard", "content": "x"}])
    assert "role" in err.value.body["param"]


def test_401_without_or_with_a_wrong_key(server: ServerThread) -> None:
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.chat.completions.create(model="support@1", messages=MSG)
    assert err.value.body["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/v1/models").status_code == 401
    # an inference key is not an admin key
    resp = httpx.get(server.url + "/admin/routes", headers={"authorization": f"Bearer {API_KEY}"})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "insufficient_scope"


def test_404_unknown_model_and_version(client: openai.OpenAI) -> None:
    for model in ("nope", "support@99", "support@staging"):
        with pytest.raises(openai.NotFoundError) as err:
            client.chat.completions.create(model=model, messages=MSG)
        assert err.value.body["code"] == "model_not_found" and model in err.value.body["message"]


def test_prompt_longer_than_the_context(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="support@1", prompt="order late " * 1500, max_tokens=4)
    assert err.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="support@1", messages=MSG, max_tokens=5000)
    assert err.value.body["code"] == "context_length_exceeded"


def test_429_per_key_request_limit_with_retry_after(server: ServerThread) -> None:
    limited = openai.OpenAI(base_url=server.url + "/v1", api_key=LIMITED_KEY, max_retries=0)
    for _ in range(2):
        limited.completions.create(model="support@1", prompt="x", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as err:
        limited.completions.create(model="support@1", prompt="x", max_tokens=1)
    assert int(err.value.response.headers["retry-after"]) > 0
    assert err.value.body["code"] == "rate_limit_exceeded"
    # other keys are not affected
    ok = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
    ok.completions.create(model="support@1", prompt="x", max_tokens=1)


class BrokenEngine(LocalEngine):
    """A local engine whose generation fails inside the engine (a bug, not a user error)."""

    async def generate(self, request: Any) -> Any:  # type: ignore[override]
        raise RuntimeError("secret internal detail: tensor exploded")
        yield  # pragma: no cover


def test_500_hides_internals_and_503_when_the_engine_is_down(start_server: Any, tiny_model_dir: Any,
                                                             serve_ws: Any) -> None:
    srv = start_server(engine=BrokenEngine(str(tiny_model_dir), workspace=serve_ws, dtype="float32"))
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="support@1", messages=MSG, max_tokens=2)
    assert err.value.status_code == 500
    assert "tensor exploded" not in err.value.response.text and "Traceback" not in err.value.response.text
    assert err.value.body["type"] == "server_error"
    assert httpx.get(srv.url + "/readyz").status_code == 200
    gw = srv.app.state.gateway
    asyncio.run_coroutine_threadsafe(gw.engine.stop(), gw.loop).result(60)
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="support@1", messages=MSG, max_tokens=2)
    assert err.value.status_code == 503 and err.value.body["code"] == "engine_unavailable"
    assert httpx.get(srv.url + "/readyz").status_code == 503
    assert httpx.get(srv.url + "/healthz").status_code == 200


def test_503_when_overloaded(start_server: Any) -> None:
    srv = start_server("serve.max_concurrent_requests=1")
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=API_KEY, max_retries=0)
    stream = client.completions.create(model="support@1", prompt="x", max_tokens=64, stream=True)
    first = next(iter(stream))  # the request holds the only slot until the stream is read
    assert first is not None
    with pytest.raises(openai.InternalServerError) as err:
        client.completions.create(model="support@1", prompt="x", max_tokens=1)
    assert err.value.status_code == 503 and err.value.body["code"] == "overloaded"
    stream.close()  # the client goes away mid-stream: the slot is freed and the request logged as 499
    gw = srv.app.state.gateway
    deadline = time.monotonic() + 30
    while gw.inflight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gw.inflight == 0
    assert client.completions.create(model="support@1", prompt="x", max_tokens=1).choices
    from tuneforge.serve.requestlog import read_log

    gw.request_log.flush()
    statuses = [r["status"] for r in read_log(gw.request_log.path, limit=2)]
    assert statuses == [200, 499]


def test_metrics_and_request_log(client: openai.OpenAI, server: ServerThread) -> None:
    client.chat.completions.create(model="support@production", messages=MSG, max_tokens=2, user="alice")
    text = httpx.get(server.url + "/metrics").text
    assert 'tuneforge:generation_tokens_total{model="support",variant="production",version="1"}' in text
    for name in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds",
                 "time_per_output_token_seconds", "num_requests_running", "lora_adapters_loaded"):
        assert f"tuneforge:{name}" in text
    assert 'tuneforge:request_success_total{finished_reason="length",model="support"' in text
    from tuneforge.serve.requestlog import read_log

    log = server.app.state.gateway.request_log
    log.flush()
    row = next(read_log(log.path, limit=1))
    assert row["model_requested"] == "support@production" and row["model_served"] == "support@1"
    assert row["variant"] == "production" and row["key_id"] == "env" and row["user_hash"]
    assert row["user_hash"] != "alice" and row["completion_tokens"] == 2
    assert row["cost"] == pytest.approx(row["prompt_tokens"] / 1000)
    assert json.dumps(row)  # exportable
