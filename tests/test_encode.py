"""Stream chunks and non-stream bodies: literal bytes, SSE framing, OpenAI's schemas and SDK."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
from openai_schema import SUBSET, schemas, translate_nullable
from openai_schema import validate as schema_validate

from ds2a.api.encode import DONE, ChunkEncoder, completion_body, new_completion_id

CID = "chatcmpl-abc123"
CREATED = 1700000000
ENC = ChunkEncoder(CID, CREATED, "deepseek-reasoner")
HEAD = (
    b'data: {"id":"chatcmpl-abc123","object":"chat.completion.chunk","created":1700000000,"model":"deepseek-reasoner",'
)
ANNOTATION = {
    "type": "url_citation",
    "url_citation": {"url": "https://example.com/a", "title": "A", "start_index": 6, "end_index": 34},
}


def event_json(event: bytes) -> dict[str, Any]:
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    payload = event[len(b"data: ") : -2]
    # One event, one data line: a raw newline inside would split it for every SSE parser.
    assert b"\n" not in payload and b"\r" not in payload
    data: dict[str, Any] = json.loads(payload)
    return data


def all_chunks() -> list[bytes]:
    return [
        ENC.role(),
        ENC.reasoning("Let me think…"),
        ENC.content("Hello"),
        ENC.content(""),
        ENC.finish("stop"),
        ENC.finish("length", [ANNOTATION]),
        ENC.usage(10, 20, 5),
    ]


# --- literal bytes ----------------------------------------------------------------------------


def test_content_chunk_bytes() -> None:
    assert ENC.content("Hi") == HEAD + (
        b'"choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}\n\n'
    )


def test_content_keeps_utf8_and_escapes_json_specials() -> None:
    text = '你好 "q" \\ \n\t\x01 \u2028 é'
    expected = b'"content":"\xe4\xbd\xa0\xe5\xa5\xbd \\"q\\" \\\\ \\n\\t\\u0001 \xe2\x80\xa8 \xc3\xa9"'
    assert expected in ENC.content(text)
    assert event_json(ENC.content(text))["choices"][0]["delta"]["content"] == text


def test_role_chunk_bytes() -> None:
    assert ENC.role() == HEAD + (
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
    )


def test_reasoning_chunk_bytes() -> None:
    assert ENC.reasoning("hmm") == HEAD + (
        b'"choices":[{"index":0,"delta":{"reasoning_content":"hmm"},"logprobs":null,"finish_reason":null}]}\n\n'
    )


def test_finish_chunk_bytes() -> None:
    assert (
        ENC.finish("stop") == HEAD + b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}\n\n'
    )


def test_usage_chunk_bytes() -> None:
    assert ENC.usage(10, 20, 5) == HEAD + (
        b'"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30,'
        b'"completion_tokens_details":{"reasoning_tokens":5}}}\n\n'
    )


def test_done() -> None:
    assert DONE == ChunkEncoder.DONE == b"data: [DONE]\n\n"


def test_error_event_bytes() -> None:
    assert ChunkEncoder.error("Upstream went away", "upstream_error", "upstream_closed") == (
        b'data: {"error":{"message":"Upstream went away","type":"upstream_error",'
        b'"param":null,"code":"upstream_closed"}}\n\n'
    )


# --- shape --------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(7))
def test_chunks_match_openai_schema(index: int) -> None:
    schema_validate(event_json(all_chunks()[index]), "CreateChatCompletionStreamResponse")


def test_every_chunk_carries_the_same_envelope() -> None:
    for chunk in all_chunks():
        data = event_json(chunk)
        assert (data["id"], data["object"], data["created"], data["model"]) == (
            CID,
            "chat.completion.chunk",
            CREATED,
            "deepseek-reasoner",
        )


def test_only_the_finish_chunk_has_a_finish_reason() -> None:
    reasons = []
    for chunk in all_chunks():
        for choice in event_json(chunk)["choices"]:
            assert (choice["index"], choice["logprobs"]) == (0, None)
            reasons.append(choice["finish_reason"])
    assert reasons == [None, None, None, None, "stop", "length"]


def test_finish_with_annotations() -> None:
    delta = event_json(ENC.finish("stop", [ANNOTATION]))["choices"][0]["delta"]
    assert delta == {"annotations": [ANNOTATION]}
    assert event_json(ENC.finish("stop", []))["choices"][0]["delta"] == {}


@pytest.mark.parametrize("reason", ["stop", "length", "content_filter", "tool_calls"])
def test_finish_reasons(reason: str) -> None:
    assert event_json(ENC.finish(reason))["choices"][0]["finish_reason"] == reason


def test_unknown_finish_reason_is_a_bug() -> None:
    with pytest.raises(ValueError):
        ENC.finish("incomplete")
    with pytest.raises(ValueError):
        completion_body(CID, CREATED, "m", content="", finish_reason="eos")


def test_error_event_matches_openai_error_schema() -> None:
    schema_validate(event_json(ChunkEncoder.error("boom", "upstream_error", None)), "ErrorResponse")


def test_id_and_model_are_escaped() -> None:
    enc = ChunkEncoder('id"1', 5, 'my "model"\\')
    data = event_json(enc.content("x"))
    assert (data["id"], data["model"], data["created"]) == ('id"1', 'my "model"\\', 5)


def test_lone_surrogate_still_gives_valid_json() -> None:
    data = event_json(ENC.content("a\ud83db"))
    assert data["choices"][0]["delta"]["content"] == "a\ud83db"


def test_sdk_parses_chunks() -> None:
    from openai.types.chat import ChatCompletionChunk

    chunk = ChatCompletionChunk.model_validate(event_json(ENC.content("Hello")))
    assert chunk.choices[0].delta.content == "Hello"
    reasoning = ChatCompletionChunk.model_validate(event_json(ENC.reasoning("r")))
    assert reasoning.choices[0].delta.model_extra == {"reasoning_content": "r"}
    usage = ChatCompletionChunk.model_validate(event_json(ENC.usage(1, 2, 1)))
    assert usage.usage is not None and usage.usage.completion_tokens_details.reasoning_tokens == 1


# --- non-stream bodies -----------------------------------------------------------------------------


def body(**kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"content": "Paris.", "prompt_tokens": 7, "completion_tokens": 3}
    args.update(kwargs)
    data: dict[str, Any] = json.loads(completion_body(CID, CREATED, "deepseek-chat", **args))
    return data


def test_completion_body_literal() -> None:
    assert body() == {
        "id": CID,
        "object": "chat.completion",
        "created": CREATED,
        "model": "deepseek-chat",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Paris.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 7,
            "completion_tokens": 3,
            "total_tokens": 10,
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"reasoning": "thought", "reasoning_tokens": 2},
        {"reasoning": ""},
        {"annotations": [ANNOTATION], "finish_reason": "length"},
        {"content": "", "finish_reason": "content_filter"},
    ],
)
def test_completion_body_matches_openai_schema(kwargs: dict[str, Any]) -> None:
    schema_validate(body(**kwargs), "CreateChatCompletionResponse")


def test_reasoning_content_only_when_given() -> None:
    assert "reasoning_content" not in body()["choices"][0]["message"]
    message = body(reasoning="thought", reasoning_tokens=2)["choices"][0]["message"]
    assert message["reasoning_content"] == "thought"
    assert body(reasoning="")["choices"][0]["message"]["reasoning_content"] == ""


def test_annotations_only_when_any() -> None:
    assert "annotations" not in body(annotations=[])["choices"][0]["message"]
    assert body(annotations=[ANNOTATION])["choices"][0]["message"]["annotations"] == [ANNOTATION]


def test_completion_body_is_utf8() -> None:
    raw = completion_body(CID, CREATED, "m", content="北京")
    assert "北京".encode() in raw


def test_sdk_parses_completion_body() -> None:
    from openai.types.chat import ChatCompletion

    parsed = ChatCompletion.model_validate(body(reasoning="r", reasoning_tokens=1, annotations=[ANNOTATION]))
    assert parsed.choices[0].message.content == "Paris."
    assert parsed.choices[0].message.annotations[0].url_citation.url == "https://example.com/a"
    assert parsed.usage is not None and parsed.usage.total_tokens == 10


# --- ids -----------------------------------------------------------------------------------------------


def test_completion_ids() -> None:
    ids = {new_completion_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"chatcmpl-[A-Za-z0-9]{29}", i) for i in ids)


# --- the schema helper itself ----------------------------------------------------------------------


def test_untranslated_schema_would_reject_null_finish_reason() -> None:
    """Proves the nullable translation matters (the README's first trap)."""
    schemas()
    raw = json.loads(SUBSET.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(
        {**raw, "$ref": "#/components/schemas/CreateChatCompletionStreamResponse"}
    )
    assert not validator.is_valid(event_json(ENC.content("x")))


def test_schema_rejects_a_chunk_without_required_fields() -> None:
    """The README's second trap: finish_reason, delta and index are required on every chunk."""
    data = event_json(ENC.content("x"))
    for key in ("finish_reason", "delta", "index"):
        broken = json.loads(json.dumps(data))
        del broken["choices"][0][key]
        with pytest.raises(jsonschema.ValidationError):
            schema_validate(broken, "CreateChatCompletionStreamResponse")


def test_schema_rejects_a_message_without_refusal() -> None:
    data = body()
    del data["choices"][0]["message"]["refusal"]
    with pytest.raises(jsonschema.ValidationError):
        schema_validate(data, "CreateChatCompletionResponse")


def test_translate_nullable() -> None:
    assert translate_nullable({"type": "string", "enum": ["a"], "nullable": True}) == {
        "anyOf": [{"type": "string", "enum": ["a"]}, {"type": "null"}]
    }
    assert translate_nullable({"properties": {"x": {"type": "integer", "nullable": False}}}) == {
        "properties": {"x": {"type": "integer"}}
    }
