"""POST /v1/feedback: authenticated, validated, stored with the request log; chat messages are logged."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import httpx
import openai
from serve_helpers import API_KEY

from tuneforge.serve.requestlog import LogRecord, RequestLog, read_feedback, read_log

AUTH = {"authorization": f"Bearer {API_KEY}"}


def test_feedback_is_stored_against_the_request_and_messages_are_logged(start_server: Any) -> None:
    srv = start_server()
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=API_KEY, max_retries=0)
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "feedback test 1"}]
    raw = client.chat.completions.with_raw_response.create(model="support", messages=messages, max_tokens=2)
    rid, resp_id = raw.headers["x-request-id"], raw.parse().id
    other = client.completions.with_raw_response.create(model="support", prompt="hi", max_tokens=1)
    other_rid = other.headers["x-request-id"]
    log_path = srv.app.state.gateway.request_log.path

    ok = httpx.post(srv.url + "/v1/feedback", headers=AUTH, json={"request_id": rid, "thumbs": "up", "comment": "good"})
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["stored"] is True and body["request_id"] == rid and body["score"] == 1.0 and body["id"].startswith("fb-")
    # the response id (chatcmpl-...) names the same request; a 1-5 rating is normalised
    by_resp = httpx.post(srv.url + "/v1/feedback", headers=AUTH,
                         json={"request_id": resp_id, "score": 2, "score_range": [1, 5]})
    assert by_resp.status_code == 200 and by_resp.json()["request_id"] == rid, by_resp.text
    down = httpx.post(srv.url + "/v1/feedback", headers=AUTH, json={"request_id": other_rid, "thumbs": "down"})
    assert down.status_code == 200 and down.json()["corrected"] is False
    fixed = httpx.post(srv.url + "/v1/feedback", headers=AUTH,
                       json={"request_id": other_rid, "correction": '{"category": "bug"}'})
    assert fixed.status_code == 200 and fixed.json()["corrected"] is True, fixed.text

    fb = read_feedback(log_path)
    assert fb[rid].score == 0.25 and fb[rid].key_id == "env"  # the latest feedback of that request wins
    assert fb[other_rid].score == 0.0 and fb[other_rid].correction == '{"category": "bug"}'  # alone: score 0
    assert fb[rid].correction is None
    with sqlite3.connect(log_path) as conn:
        stored = conn.execute("SELECT score, comment FROM feedback WHERE request_id = ? ORDER BY seq", (rid,)).fetchall()
    assert stored == [(1.0, "good"), (0.25, None)]

    rows = {r["request_id"]: r for r in read_log(log_path, model="support")}
    assert rows[rid]["messages"] == messages  # chat keeps its conversation, for retraining
    assert rows[other_rid]["messages"] is None  # /v1/completions has none


def test_feedback_errors(start_server: Any) -> None:
    srv = start_server()
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=API_KEY, max_retries=0)
    rid = client.completions.with_raw_response.create(model="support", prompt="x", max_tokens=1).headers["x-request-id"]

    no_key = httpx.post(srv.url + "/v1/feedback", json={"request_id": rid, "thumbs": "up"})
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
    missing = httpx.post(srv.url + "/v1/feedback", headers=AUTH, json={"request_id": "req-nope", "thumbs": "up"})
    assert missing.status_code == 404
    err = missing.json()["error"]
    assert err["param"] == "request_id" and "req-nope" in err["message"] and err["type"] == "invalid_request_error"

    cases = [
        ({"thumbs": "up"}, "request_id"),
        ({"request_id": rid}, "thumbs"),  # neither score nor thumbs
        ({"request_id": rid, "score": 0.5, "thumbs": "up"}, "score"),
        ({"request_id": rid, "thumbs": "sideways"}, "thumbs"),
        ({"request_id": rid, "score": 1.5}, "score"),
        ({"request_id": rid, "score": "high"}, "score"),
        ({"request_id": rid, "score": 3, "score_range": [5, 1]}, "score_range"),
        ({"request_id": rid, "thumbs": "up", "comment": 7}, "comment"),
        ({"request_id": rid, "thumbs": "up", "rating": 3}, "rating"),
        ({"request_id": rid, "correction": "   "}, "correction"),
        ({"request_id": rid, "thumbs": "down", "correction": ["a"]}, "correction"),
    ]
    for body, param in cases:
        r = httpx.post(srv.url + "/v1/feedback", headers=AUTH, json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param, (body, r.json())
    not_json = httpx.post(srv.url + "/v1/feedback", headers=AUTH, content=b"{oops")
    assert not_json.status_code == 400
    assert rid not in read_feedback(srv.app.state.gateway.request_log.path)


def test_an_old_log_gains_the_new_column_and_table(tmp_path: Any) -> None:
    path = tmp_path / "requests.db"
    with sqlite3.connect(path) as conn:  # the schema before messages and feedback existed
        conn.execute("CREATE TABLE requests (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT, time REAL, "
                     "endpoint TEXT, key_id TEXT, user_hash TEXT, model_requested TEXT, model_served TEXT, "
                     "version TEXT, variant TEXT, shadow INTEGER, status INTEGER, prompt TEXT, response TEXT, "
                     "prompt_tokens INTEGER, completion_tokens INTEGER, ttft_s REAL, latency_s REAL, queue_s REAL, "
                     "finish_reason TEXT, cost REAL, error TEXT)")
        conn.execute("INSERT INTO requests (request_id, time, endpoint, key_id, model_requested, shadow, status) "
                     "VALUES ('old', 1.0, 'chat', 'k', 'm', 0, 200)")
    assert [r["messages"] for r in read_log(path)] == [None]  # readable before any migration
    assert read_feedback(path) == {}
    log = RequestLog(path)
    log.write(LogRecord("new", 2.0, "chat", "k", None, "m", "m@1", "1", "production",
                        messages=json.dumps([{"role": "user", "content": "hi"}])))
    log.write_feedback("old", "k", 0.5)
    log.close()
    rows = {r["request_id"]: r for r in read_log(path)}
    assert rows["old"]["messages"] is None and rows["new"]["messages"] == [{"role": "user", "content": "hi"}]
    assert read_feedback(path)["old"].score == 0.5


def test_feedback_written_before_corrections_existed_stays_readable(tmp_path: Any) -> None:
    path = tmp_path / "requests.db"
    RequestLog(path).close()
    with sqlite3.connect(path) as conn:  # the feedback table as it was before the correction column
        conn.execute("DROP TABLE feedback")
        conn.execute("CREATE TABLE feedback (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT, request_id TEXT, "
                     "time REAL, key_id TEXT, score REAL, comment TEXT)")
        conn.execute("INSERT INTO feedback (id, request_id, time, key_id, score) VALUES ('fb-1', 'a', 1.0, 'k', 1.0)")
    assert read_feedback(path)["a"].correction is None  # read-only readers do not migrate
    log = RequestLog(path)
    log.write_feedback("b", "k", 0.0, correction="the right answer")
    log.close()
    fb = read_feedback(path)
    assert fb["a"].score == 1.0 and fb["b"].correction == "the right answer"
