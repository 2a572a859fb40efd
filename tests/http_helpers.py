"""Posting audio to the API from tests, one way: a multipart form with the bytes as the `file`
part (its file name is not used by the service), optional headers and plain form fields.

`post` gives the response as it came, for tests that check statuses; `recognize` asserts a 200
(with the body in the failure message) and gives the JSON answer."""

from __future__ import annotations

from typing import Any


def post(client: Any, data: bytes, path: str = "/recognize", headers: dict | None = None, **fields: Any):
    """POST `data` as the form's `file` part to `path`, with `fields` as plain form fields."""
    return client.post(path, files={"file": ("upload.bin", data, "application/octet-stream")}, data=fields,
                       headers=headers or {})


def recognize(client: Any, data: bytes, path: str = "/recognize", headers: dict | None = None, **fields: Any) -> dict:
    """`post`, asserting a 200; the JSON answer."""
    answer = post(client, data, path, headers, **fields)
    assert answer.status_code == 200, answer.text
    return answer.json()
