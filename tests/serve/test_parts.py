"""Library-level parts of the gateway: keys, rate limits, request log, templates, config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tuneforge.config import load_config
from tuneforge.errors import ConfigError
from tuneforge.serve.auth import KeyInfo, KeyStore, hash_key
from tuneforge.serve.errors import ApiError
from tuneforge.serve.ratelimit import RateLimiter
from tuneforge.serve.requestlog import LogRecord, RequestLog, export_jsonl, read_log


def test_keys_are_kept_hashed_and_scoped() -> None:
    cfg = load_config(None, [f'serve.keys=[{{id: ops, sha256: "{hash_key("k-ops")}", scopes: [inference, admin]}}]'])
    store = KeyStore.from_config(cfg.serve, {"TUNEFORGE_API_KEY": "k-env"})
    assert "k-env" not in repr(store.__dict__) and "k-ops" not in repr(store.__dict__)
    assert store.authenticate("Bearer k-env").id == "env"
    assert store.authenticate("Bearer k-ops", scope="admin").id == "ops"
    for header in (None, "Bearer nope", "Basic k-env"):
        with pytest.raises(ApiError) as err:
            store.authenticate(header)
        assert err.value.status == 401
    with pytest.raises(ApiError) as err:
        store.authenticate("Bearer k-env", scope="admin")
    assert err.value.status == 403
    assert KeyStore({}, enabled=False).authenticate(None).id == "anonymous"
    with pytest.raises(ConfigError, match="sha256"):
        load_config(None, ['serve.keys=[{id: x, sha256: "plaintext-key"}]'])


def test_rate_limits_per_minute_with_retry_after() -> None:
    now = [1000.0]
    limiter = RateLimiter(clock=lambda: now[0])
    key = KeyInfo("k", frozenset({"inference"}), requests_per_minute=2, tokens_per_minute=100)
    limiter.admit(key)
    limiter.admit(key)
    with pytest.raises(ApiError) as err:
        limiter.admit(key)
    assert err.value.status == 429 and err.value.headers()["retry-after"] == "60"
    now[0] += 30
    with pytest.raises(ApiError):
        limiter.admit(key)
    now[0] += 31  # the first two requests left the window
    limiter.admit(key)
    limiter.charge(key, 150)  # over the token budget: the next request waits
    now[0] += 1
    with pytest.raises(ApiError, match="tokens per minute") as err:
        limiter.admit(key)
    assert int(err.value.headers()["retry-after"]) == 59
    limiter.admit(KeyInfo("other", frozenset(), requests_per_minute=1))  # keys are independent


def _rec(i: int, model: str = "m@1", prompt: str = "hi") -> LogRecord:
    return LogRecord(f"r{i}", 1000.0 + i, "chat", "k", None, model.split("@")[0], model, "1", "production",
                     prompt=prompt, response="ok", prompt_tokens=3, completion_tokens=2)


def test_request_log_rotates_exports_and_filters(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "r.db", max_rows=10)
    for i in range(57):
        log.write(_rec(i, "a@1" if i % 2 else "b@2"))
    rows = list(read_log(log.path))
    assert len(rows) <= 11 and rows[0]["request_id"] == "r56"  # newest first, oldest dropped
    log.close()
    assert len(list(read_log(log.path))) == 10
    n = export_jsonl(log.path, tmp_path / "out" / "a.jsonl", model="a", limit=3)
    lines = [json.loads(x) for x in (tmp_path / "out" / "a.jsonl").read_text().splitlines()]
    assert n == 3 and [x["request_id"] for x in lines] == ["r51", "r53", "r55"]
    assert all(x["model_served"] == "a@1" for x in lines)


def test_request_log_redacts_pii_or_drops_text(tmp_path: Path) -> None:
    from tuneforge.data._pii import PiiScanner

    log = RequestLog(tmp_path / "r.db", redactor=PiiScanner(["EMAIL_ADDRESS"]))
    log.write(_rec(1, prompt="mail me at jane.doe@example.com please"))
    log.close()
    row = next(read_log(log.path))
    assert "jane.doe@example.com" not in row["prompt"] and "please" in row["prompt"]
    bare = RequestLog(tmp_path / "bare.db", store_text=False)
    bare.write(_rec(2))
    bare.close()
    row = next(read_log(bare.path))
    assert row["prompt"] is None and row["response"] is None and row["prompt_tokens"] == 3


def test_chat_is_rendered_with_the_adapters_recorded_template(tiny_model_dir: Path, tmp_path: Path,
                                                              serve_ws: Any) -> None:
    from serve_helpers import make_adapter

    from tuneforge.serve.render import Renderer

    adapter = make_adapter(tiny_model_dir, tmp_path / "a", 3, serve_ws)
    # A tokenizer_config template that differs from the recorded contract must not be used.
    cfg_path = adapter / "tokenizer_config.json"
    tc = json.loads(cfg_path.read_text())
    tc["chat_template"] = "GENERIC {{ messages[0]['content'] }}"
    cfg_path.write_text(json.dumps(tc))
    (adapter / "chat_template.jinja").unlink(missing_ok=True)
    renderer = Renderer()
    tpl = renderer.template_for(adapter, adapter=True)
    text = renderer.render_chat(tpl, [{"role": "user", "content": "hello there"}])
    assert "GENERIC" not in text and "<|im_start|>user\nhello there<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    with pytest.raises(ApiError) as err:
        renderer.render_chat(tpl, [{"role": "robot", "content": "x"}])
    assert err.value.status == 400 and err.value.param == "messages.[0].role"


def test_no_auth_binds_to_localhost_only() -> None:
    from tuneforge.serve.server import bind_host

    cfg = load_config(None, ["serve.host=0.0.0.0"])
    assert bind_host(cfg, None, auth=True) == ("0.0.0.0", [])
    host, notes = bind_host(cfg, "0.0.0.0", auth=False)
    assert host == "127.0.0.1" and "127.0.0.1" in notes[0]


def test_auth_on_without_keys_is_a_clear_error(make_cfg: Any, serve_ws: Any) -> None:
    from tuneforge.serve.server import ServeError, build_app

    with pytest.raises(ServeError, match="no API key") as err:
        build_app(make_cfg(), serve_ws, environ={})
    assert "--no-auth" in err.value.render()


def test_config_adapters_are_served_without_the_registry(registered: Any, tmp_path: Path) -> None:
    from tuneforge.errors import ModelError
    from tuneforge.serve.catalog import Catalog, StaticSource

    catalog = Catalog("base", "bundled:base", StaticSource({"faq": registered["paths"][2]}))
    target = catalog.resolve("faq")
    assert target.served_name == "faq@1" and target.variant == "1"
    assert target.version.dataset_fingerprint == "2" * 64 and target.version.checksum
    assert catalog.local_path(target.version) == registered["paths"][2]
    assert catalog.resolve("bundled:base").version is None
    with pytest.raises(ApiError) as err:
        catalog.resolve("faq@2")
    assert err.value.status == 404 and "faq@1" in err.value.message
    with pytest.raises(ModelError, match="not a trained adapter"):
        StaticSource({"x": tmp_path})


def test_an_accepted_marker_is_not_a_token() -> None:
    from tuneforge.serve.app import _Outcome
    from tuneforge.serve.engines.base import GenerationEvent

    out = _Outcome()
    accepted = GenerationEvent(index=0, text="", prompt_tokens=7)
    assert accepted.empty and out.add(accepted) == (None, 0)
    assert out.ttft_s is None and out.prompt_tokens == 7 and out.text(0) == ""
    gap, added = out.add(GenerationEvent(index=0, text="Hi", token_ids=(5,), prompt_tokens=7, completion_tokens=1))
    assert out.ttft_s is not None and gap is None and added == 1 and out.text(0) == "Hi"
    assert not GenerationEvent(index=0, text="", finish_reason="stop").empty  # a bare finish is news


def test_event_stream_sends_every_chunk_then_closes() -> None:
    import asyncio

    from tuneforge.serve.streaming import EventStreamResponse

    closed: list[str] = []

    async def body() -> Any:
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"

    async def run() -> list[Any]:
        sent: list[Any] = []
        finished = asyncio.Event()

        async def receive() -> Any:
            await finished.wait()  # uvicorn answers disconnect once the response is complete
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message["more_body"]:
                finished.set()

        async def on_close() -> None:
            closed.append("closed")

        await EventStreamResponse(body(), {"x-tuneforge-variant": "base"}, on_close)({}, receive, send)
        return sent

    sent = asyncio.run(run())
    assert sent[0]["status"] == 200 and (b"content-type", b"text/event-stream; charset=utf-8") in sent[0]["headers"]
    assert (b"x-tuneforge-variant", b"base") in sent[0]["headers"]
    assert [m["body"] for m in sent[1:]] == [b"data: 1\n\n", b"data: 2\n\n", b""]
    assert closed == ["closed"]


def test_event_stream_stops_and_cleans_up_when_the_client_leaves() -> None:
    import asyncio

    from tuneforge.serve.streaming import EventStreamResponse

    events: list[str] = []

    async def body() -> Any:
        try:
            yield b"data: 1\n\n"
            await asyncio.sleep(60)  # an engine that has not produced the next token yet
            yield b"data: 2\n\n"
        finally:
            events.append("body closed")

    async def run() -> list[Any]:
        sent: list[Any] = []
        gone = asyncio.Event()

        async def receive() -> Any:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(message)
            if message.get("body") == b"data: 1\n\n":
                asyncio.get_running_loop().call_later(0.05, gone.set)

        async def on_close() -> None:
            events.append("on_close")

        await asyncio.wait_for(EventStreamResponse(body(), {}, on_close)({}, receive, send), 10)
        return sent

    sent = asyncio.run(run())
    assert [m.get("body") for m in sent[1:]] == [b"data: 1\n\n"]  # no end-of-body for a client that left
    assert events == ["body closed", "on_close"]
