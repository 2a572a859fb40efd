"""How an upstream's error answer is read (service/engines/upstream/refusal.py): the reason, the
fields it names, and whose fault it is. The end-to-end cases, against real servers, are in
tests/test_upstream.py and tests/test_funasr_http.py."""

from __future__ import annotations

import json

import httpx
import pytest

from earmark.service.api.errors import http_status
from earmark.service.engines.upstream.refusal import operator_hint, read_error, refusal, without_secrets

OPENAI_FIELDS = ("language", "prompt")


def answer(status: int, body) -> httpx.Response:
    return httpx.Response(status, content=(body if isinstance(body, str) else json.dumps(body)).encode())


@pytest.mark.parametrize("status,body,client_status,named", [
    (400, {"error": {"message": "Invalid language 'xx'.", "param": "language"}}, 422, "'language'"),
    (422, {"detail": [{"loc": ["body", "prompt"], "msg": "ensure this value has at most 224 characters"}]}, 422,
     "'prompt'"),
    (422, {"code": 422, "msg": "language 'fr' is not supported by engine 'pocketsphinx'"}, 422, "'language'"),
    (415, "Unsupported Media Type", 422, "16 kHz mono WAV"),
    (400, "audio is too short", 422, "options (language, prompt) or its audio"),
    (413, "<html><head><title>413 Request Entity Too Large</title></head></html>", 413, "send shorter audio"),
])
def test_a_refusal_of_the_request_is_the_clients_4xx_naming_what_to_change(status, body, client_status, named):
    refused = refusal(read_error(answer(status, body), ()), OPENAI_FIELDS, 10.0)
    assert refused is not None and http_status(refused) == client_status
    assert str(refused).startswith(f"the upstream ASR server refused this request (HTTP {status}: ")
    assert named in str(refused)


@pytest.mark.parametrize("status,body", [
    (401, {"error": {"message": "Incorrect API key provided"}}),
    (403, "Forbidden"), (404, {"detail": "Not Found"}), (405, {"detail": "Method Not Allowed"}),
    (500, "Internal Server Error"), (501, "not implemented"),
    (400, {"error": {"message": "verbose_json is not supported", "param": "response_format"}}),
    (422, {"detail": [{"loc": ["body", "model"], "msg": "unknown model"}]}),
])
def test_the_operators_failures_are_not_the_clients(status, body):
    assert refusal(read_error(answer(status, body), ()), OPENAI_FIELDS, 10.0) is None


def test_a_configured_field_is_named_with_its_setting_unless_a_client_field_is_named_too():
    only_format = read_error(answer(400, {"error": {"message": "bad", "param": "response_format"}}), ())
    assert "'response_format' (upstream_response_format)" in operator_hint(only_format, OPENAI_FIELDS)
    both = read_error(answer(400, {"error": {"message": "response_format json has no language", "param": "language"}}), ())
    assert operator_hint(both, OPENAI_FIELDS) == "" and refusal(both, OPENAI_FIELDS, 1.0) is not None
    # funasr-http sends no options: a field the answer names is no field of the client's.
    funasr = read_error(answer(422, {"detail": [{"loc": ["body", "audio"], "msg": "field required"}]}), ())
    assert "change what its reason names" in str(refusal(funasr, (), 1.0))


def test_reasons_are_bounded_and_carry_no_credentials():
    long = answer(400, {"error": {"message": "x" * 5000}})
    assert len(read_error(long, ()).reason) < 260
    echoed = answer(401, {"error": {"message": "Incorrect API key provided: sk-proj-abcdef123456, sent as "
                                               "Bearer tok.en.value with my-own-secret"}})
    reason = read_error(echoed, ("my-own-secret", "")).reason
    assert "abcdef" not in reason and "tok.en" not in reason and "my-own-secret" not in reason
    assert "sk-***" in reason and "Bearer ***" in reason
    basic = read_error(answer(401, "bad credentials: Basic b3BlcmF0b3I6cGE1NXdvcmQ= (operator)"), ()).reason
    assert "b3Bl" not in basic and "Basic ***" in basic
    assert without_secrets("nothing here", ("", "")) == "nothing here"
