"""`POST /v1/feedback`: a user's verdict on a served response, stored next to it in the request log.

Body: ``{"request_id": ..., "score": 0..1 | "thumbs": "up" | "down", "comment": "...",
"correction": "..."}``. A correction is the answer the user wanted instead; retraining trains on it
(alone it counts as a score of 0: the served answer needed correcting). A score on
another scale names it with ``"score_range": [low, high]`` (e.g. 1-5 stars) and is normalised to
[0, 1]; thumbs up is 1 and down is 0. The request id is the response's ``x-request-id`` header, or
its ``id`` (``chatcmpl-...`` / ``cmpl-...``), which maps back to the same request.
"""

from __future__ import annotations

import math
from typing import Any

from tuneforge.serve.auth import KeyInfo
from tuneforge.serve.errors import ApiError, bad_request
from tuneforge.serve.requestlog import RequestLog

MAX_COMMENT_CHARS = 4000
MAX_CORRECTION_CHARS = 32000
_THUMBS = {"up": 1.0, "down": 0.0}


def normalise_score(body: dict[str, Any]) -> float:
    """The feedback's score in [0, 1]; a 400 naming the field for anything else."""
    has_score, has_thumbs = body.get("score") is not None, body.get("thumbs") is not None
    if not has_score and not has_thumbs and body.get("correction") is not None:
        return 0.0
    if has_score == has_thumbs:
        raise bad_request("Send exactly one of 'score' (a number) or 'thumbs' ('up' or 'down').",
                          param="score" if has_score else "thumbs")
    if has_thumbs:
        thumbs = body["thumbs"]
        if not isinstance(thumbs, str) or thumbs.lower() not in _THUMBS:
            raise bad_request(f"Invalid value for 'thumbs': expected 'up' or 'down', got {thumbs!r}.", param="thumbs")
        return _THUMBS[thumbs.lower()]
    score = body["score"]
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise bad_request(f"Invalid value for 'score': expected a number, got {score!r}.", param="score")
    low, high = 0.0, 1.0
    if body.get("score_range") is not None:
        rng = body["score_range"]
        if (not isinstance(rng, list) or len(rng) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in rng) or rng[0] >= rng[1]):
            raise bad_request("Invalid value for 'score_range': expected [low, high] with low < high, e.g. [1, 5].",
                              param="score_range")
        low, high = float(rng[0]), float(rng[1])
    if not low <= score <= high:
        raise bad_request(f"Invalid value for 'score': {score} is outside [{low:g}, {high:g}]"
                          + ("" if body.get("score_range") else "; send 'score_range' for another scale") + ".",
                          param="score")
    return (float(score) - low) / (high - low)


def candidate_ids(request_id: str) -> list[str]:
    """The log ids a client-side id may stand for: itself, or the request behind a response id."""
    ids = [request_id]
    for prefix in ("chatcmpl-", "cmpl-"):
        if request_id.startswith(prefix):
            rest = request_id.removeprefix(prefix)
            ids += [f"req-{rest}", rest]
    return ids


def record_feedback(log: RequestLog | None, key: KeyInfo, body: dict[str, Any]) -> dict[str, Any]:
    """Validate ``body``, find its request in ``log`` and store the feedback; the response body."""
    if log is None:
        raise ApiError(501, "Feedback is stored with the request log, which is off on this server.",
                       code="request_log_disabled")
    rid = body.get("request_id")
    if not isinstance(rid, str) or not rid.strip():
        raise bad_request("Missing 'request_id': send the x-request-id header or the id of the response.",
                          param="request_id")
    comment = body.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS):
        raise bad_request(f"Invalid value for 'comment': expected a string of at most {MAX_COMMENT_CHARS} "
                          "characters.", param="comment")
    correction = body.get("correction")
    if correction is not None and (not isinstance(correction, str) or not correction.strip()
                                   or len(correction) > MAX_CORRECTION_CHARS):
        raise bad_request(f"Invalid value for 'correction': expected the corrected answer as a non-empty string "
                          f"of at most {MAX_CORRECTION_CHARS} characters.", param="correction")
    unknown = sorted(set(body) - {"request_id", "score", "thumbs", "comment", "correction", "score_range"})
    if unknown:
        raise bad_request(f"Unknown field '{unknown[0]}' (expected request_id, score or thumbs, comment, "
                          "correction, score_range).", param=unknown[0])
    score = normalise_score(body)
    found = next((r for r in map(log.find_request, candidate_ids(rid.strip())) if r is not None), None)
    if found is None:
        raise ApiError(404, f"No request with id '{rid}' in the request log (it may be older than the log keeps).",
                       code="request_not_found", param="request_id")
    fb = log.write_feedback(found["request_id"], key.id, score, comment, correction)
    return {"id": fb.id, "object": "feedback", "request_id": fb.request_id, "score": fb.score,
            "corrected": fb.correction is not None, "created": int(fb.time), "stored": True}
