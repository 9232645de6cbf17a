"""Literal upstream bodies (facts of the protocol) and the envelope around the rest.

The byte strings here are the captured bodies of shared/fixtures/sse/error-*.txt and
the hint/close payloads of the synthetic-hint-*.txt transcripts (protocol doc §3, §10).
"""

from __future__ import annotations

import json
from typing import Any

MISSING_TOKEN = b'{"code":40002,"msg":"Missing Token","data":null}'
INVALID_TOKEN = b'{"code":40003,"msg":"Authorization Failed (invalid token)","data":null}'
POW_MISSING_HEADER = b'{"code":40300,"msg":"MISSING_HEADER"}'
# Only the missing/undecodable case has a published body. What the server says for a
# wrong answer, a bad signature, a foreign target path, an expired or replayed challenge
# is undocumented; the simulator keeps the same 40300 envelope with its own message.
POW_INVALID = b'{"code":40300,"msg":"INVALID_POW_RESPONSE"}'
INVALID_SESSION = b'{"code":0,"msg":"","data":{"biz_code":1,"biz_msg":"invalid chat session id","biz_data":null}}'
WRONG_PASSWORD = b'{"code":0,"data":{"biz_code":2,"biz_msg":"PASSWORD_OR_USER_NAME_IS_WRONG"}}'
# Documented for edit_message (§8); the simulator reuses it for continuing a message
# that does not exist or is not INCOMPLETE, which no source describes.
INVALID_MESSAGE = b'{"code":0,"msg":"","data":{"biz_code":26,"biz_msg":"invalid message id","biz_data":null}}'

RATE_LIMIT_HINT = {
    "type": "error",
    "content": "Messages too frequent. Try again later.",
    "clear_response": True,
    "finish_reason": "rate_limit_reached",
}
INPUT_TOO_LONG_HINT = {
    "type": "error",
    "content": "Content is too long. Please shorten it and try again.",
    "clear_response": True,
    "finish_reason": "input_exceeds_limit",
}
# The text is quoted by a peer (§7.9); the framing is unpublished. The simulator sends it
# like the other refusals (ready, hint, close) with no finish_reason of its own (null),
# so only the text identifies it, as the peer's report does.
BUSY_HINT = {
    "type": "error",
    "content": "A message is being generated, please try again later.",
    "clear_response": True,
    "finish_reason": None,
}
# Drift of 2026-08..10 (§16). The codes and words are the published ones; the
# envelopes around them follow the other error bodies (the exact bytes are unpublished).
BANNED_LOGIN = b'{"code":0,"msg":"","data":{"biz_code":10,"biz_msg":"USER_IS_BANNED","biz_data":null}}'
RISK_DEVICE_LOGIN = b'{"code":0,"msg":"","data":{"biz_code":11,"biz_msg":"RISK_DEVICE_DETECTED","biz_data":null}}'
CLIENT_TOO_OLD = b'{"code":40005,"msg":"CLIENT_VERSION_TOO_LOW","data":null}'
POW_INVALID_IN_STREAM = {"code": 40301, "msg": "INVALID_POW_RESPONSE", "data": None}
TOAST_ERROR = {"type": "error", "content": "This mode is not supported by your client version. Please update."}
WAF_PAGE = (
    b"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Human Verification</title></head>"
    b"<body><div id=\"captcha-container\"></div><script>/* challenge */</script></body></html>"
)
CHALLENGE_BODY = b'{"challenge":"c2ltdWxhdGVk","type":"js","expires_in":300}'

CLOSE_NONE = {"click_behavior": "none", "auto_resume": False}
CLOSE_RETRY = {"click_behavior": "retry", "auto_resume": False}

TIP_TEXT = "本回答由 AI 生成，内容仅供参考，请仔细甄别。"
TEMPLATE_TEXT = "你好，这个问题我暂时无法回答，让我们换个话题再聊聊吧。"


def dumps(value: Any) -> str:
    """Compact, raw UTF-8 JSON: the serialisation every 2026 capture uses."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def ok(biz_data: Any) -> bytes:
    envelope = {"code": 0, "msg": "", "data": {"biz_code": 0, "biz_msg": "", "biz_data": biz_data}}
    return dumps(envelope).encode()


def muted(mute_until: float) -> bytes:
    envelope = {
        "code": 0,
        "msg": "",
        "data": {"biz_code": 5, "biz_msg": "user is muted", "biz_data": {"is_muted": 1, "mute_until": mute_until}},
    }
    return dumps(envelope).encode()


def missing_fields(fields: list[str]) -> bytes:
    """HTTP 422 body; the doc (§2.1) gives loc as the string "body.<field>"."""
    detail = [{"loc": f"body.{name}", "msg": "field required", "type": "missing"} for name in fields]
    return dumps({"detail": detail}).encode()


def invalid_json() -> bytes:
    return dumps({"detail": [{"loc": "body", "msg": "invalid JSON body", "type": "json_invalid"}]}).encode()
