"""JSON answers (service/api/responses.py): the same JSON Starlette's encoder writes, encoded by
orjson, and never a failed answer for what orjson does not take."""

from __future__ import annotations

import json

import numpy as np
from starlette.responses import JSONResponse as StarletteJSONResponse

from earmark.service.api.responses import JSONResponse

ANSWER = {"code": 0, "msg": "success",
          "result": {"text": "欢迎大家来体验达摩院推出的语音识别模型", "duration_s": 5.547, "language": "zh",
                     "segments": [{"id": 0, "start": 0.0, "end": 5.3, "text": "Don will call",
                                   "words": [{"word": " Don", "start": 0.0, "end": 0.4, "probability": 0.91}],
                                   "tokens": [50363, 3166], "avg_logprob": -0.25}]},
          "cache": {"tier": "exact", "entry": "0" * 32, "score": None, "engine_seconds": 1.141, "elapsed_ms": 1.93,
                    "spans": [], "negative": False}}


def test_answers_are_the_json_starlette_writes():
    body = JSONResponse(ANSWER).body
    assert json.loads(body) == json.loads(StarletteJSONResponse(ANSWER).body) == ANSWER
    assert "欢迎".encode() in body  # UTF-8, not \\u escapes
    assert JSONResponse(ANSWER).headers["content-type"] == "application/json"


def test_numbers_of_any_kind_are_written_and_never_fail_an_answer():
    assert json.loads(JSONResponse({1: "a key that is a number"}).body) == {"1": "a key that is a number"}
    assert json.loads(JSONResponse({"score": np.float32(0.5), "n": np.int64(3)}).body) == {"score": 0.5, "n": 3}
    assert json.loads(JSONResponse({"big": 2 ** 70}).body) == {"big": 2 ** 70}  # over 64 bits: the standard encoder
