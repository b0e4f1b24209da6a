"""Chat messages to prompt text with the template the model was trained with.

For an adapter that is the chat template recorded in its tuneforge.json contract, applied with
the tokenizer saved in its directory; for the base, the base's own tokenizer and template. There
is no generic fallback template: a model without one cannot serve chat.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.serve.errors import ApiError

_ROLES = {"system", "user", "assistant", "developer", "tool"}


@dataclass(frozen=True)
class Template:
    tokenizer: Any
    chat_template: str
    stop_tokens: tuple[str, ...]  # contract stop tokens (e.g. <|im_end|>), kept as stop strings too


class Renderer:
    """Caches one tokenizer + template per model directory."""

    def __init__(self) -> None:
        self._cache: dict[Path, Template] = {}
        self._lock = threading.Lock()

    def cached(self, directory: Path) -> Template | None:
        """The template already loaded for ``directory`` (no thread hop needed on the hot path)."""
        return self._cache.get(directory)

    def template_for(self, directory: Path, *, adapter: bool) -> Template:
        with self._lock:
            found = self._cache.get(directory)
            if found is None:
                found = _load(directory, adapter=adapter)
                self._cache[directory] = found
            return found

    def render_chat(self, template: Template, messages: list[dict[str, Any]]) -> str:
        convo = [_normalise(m, i) for i, m in enumerate(messages)]
        try:
            return template.tokenizer.apply_chat_template(
                convo, chat_template=template.chat_template, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # jinja raises on conversations a template rejects
            raise ApiError(400, f"The messages cannot be rendered with the model's chat template: {exc}",
                           param="messages") from None


def _load(directory: Path, *, adapter: bool) -> Template:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    template = getattr(tokenizer, "chat_template", None) or ""
    stops: list[str] = [tokenizer.eos_token] if tokenizer.eos_token else []
    if adapter:
        from tuneforge.train._artifacts import read_meta

        contract = (read_meta(directory) or {}).get("contract") or {}
        recorded = contract.get("chat_template")
        if recorded:
            sha = contract.get("chat_template_sha256")
            if sha and hashlib.sha256(recorded.encode()).hexdigest() != sha:
                raise ApiError(500, f"the chat template recorded in {directory} does not match its sha256")
            template = recorded
        stops = list(contract.get("stop_tokens") or stops)
    if not template:
        raise ApiError(400, f"{directory.name} has no chat template; use /v1/completions with a raw prompt.",
                       param="messages", code="no_chat_template")
    return Template(tokenizer, template, tuple(stops))


def _normalise(message: dict[str, Any], index: int) -> dict[str, Any]:
    role = message.get("role")
    if role not in _ROLES:
        raise ApiError(400, f"messages[{index}].role must be one of {sorted(_ROLES)}, got {role!r}",
                       param=f"messages.[{index}].role")
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise ApiError(400, f"messages[{index}].content[{j}]: only text parts are supported",
                               param=f"messages.[{index}].content")
            texts.append(str(part.get("text", "")))
        content = "".join(texts)
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ApiError(400, f"messages[{index}].content must be a string or text parts",
                       param=f"messages.[{index}].content")
    return {"role": "system" if role == "developer" else role, "content": content}
