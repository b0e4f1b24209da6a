"""A stand-in judge: a real OpenAI-compatible HTTP server (FastAPI under uvicorn on 127.0.0.1).

It is a fixture standing in for a judge model, with a deterministic content-based rule so tests
can check results exactly: an answer that is valid JSON is good (rubric 9, preferred in pairwise),
anything else is poor (rubric 2). With model "biased-judge" it always answers "Verdict: A"
(pure position bias), which the both-orders logic must turn into ties.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def _good(answer: str) -> bool:
    try:
        json.loads(answer)
        return True
    except ValueError:
        return False


def decide(model: str, prompt: str) -> str:
    if "[Assistant's answer]" in prompt:
        answer = _between(prompt, "[Assistant's answer]", "\n\nRate")
        return f"Score: {9 if _good(answer) else 2}"
    if model == "biased-judge":
        return "Verdict: A"
    a, b = _between(prompt, "[Answer A]", "\n\n[Answer B]"), _between(prompt, "[Answer B]", "\n\nWhich answer")
    if _good(a) == _good(b):
        return "Both are similar. Verdict: tie"
    return "Verdict: A" if _good(a) else "Verdict: B"


@dataclass
class JudgeServer:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    server: Any = None
    thread: threading.Thread | None = None

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread:
            self.thread.join(timeout=10)


def start() -> JudgeServer:
    app = FastAPI()
    handle = JudgeServer(url="")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        handle.requests.append({"body": body, "auth": request.headers.get("authorization")})
        content = decide(body["model"], body["messages"][-1]["content"])
        return {"id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}]}

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the judge stand-in server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    handle.url, handle.server, handle.thread = f"http://127.0.0.1:{port}/v1", server, thread
    return handle
