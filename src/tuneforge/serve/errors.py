"""OpenAI's error envelope: every failure a client sees is ``{"error": {message, type, param, code}}``.

Handlers never put a stack trace in a response; unexpected exceptions become a generic 500 and
are logged server-side with the request id.
"""

from __future__ import annotations

from dataclasses import dataclass

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


@dataclass
class ApiError(Exception):
    """An error for the client: HTTP status plus the OpenAI fields."""

    status: int
    message: str
    code: str | None = None
    param: str | None = None
    retry_after: float | None = None  # seconds, for 429

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"retry-after": str(max(1, int(self.retry_after + 0.999)))}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, code=code, param=param)


def model_not_found(model: str, known: list[str]) -> ApiError:
    shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
    return ApiError(
        404, f"The model '{model}' does not exist. Served models: {shown}. GET /v1/models lists them.",
        code="model_not_found", param="model",
    )
