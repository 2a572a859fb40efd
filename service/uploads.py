"""Read a multipart upload and its form options, with the contract's limits and errors."""

from __future__ import annotations

import re

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from service.engines.base import RecognitionOptions
from service.errors import ApiError

_MULTIPART_SLACK = 64 * 1024  # boundary lines and small fields around the file part


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, FormData]:
    """Return the `file` field's bytes and the whole form, or raise an `ApiError`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + _MULTIPART_SLACK:
        raise ApiError(413, _too_large(max_bytes))
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "send the audio as multipart/form-data with the file in a field named 'file'")
    try:
        form = await request.form(max_files=4, max_fields=32)
    except HTTPException as exc:
        raise ApiError(400, f"the multipart body could not be read ({exc.detail}); send a well-formed form") from exc
    except (ValueError, KeyError) as exc:
        raise ApiError(400, "the multipart body could not be read; send a well-formed form") from exc
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "no file in the form; send the audio in a multipart field named 'file'")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(413, _too_large(max_bytes))
    return data, form


def recognition_options(form: FormData) -> RecognitionOptions:
    """Parse the optional recognition fields shared by the endpoints."""
    hotwords = _text(form, "hotwords").strip()
    return RecognitionOptions(
        language=_text(form, "language") or None,
        use_itn=_boolean(form, "use_itn"),
        hotwords=tuple(re.split(r"[\s,]+", hotwords)) if hotwords else (),
        prompt=_text(form, "prompt"),
    )


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    if value is None:
        return ""
    if isinstance(value, UploadFile):
        raise ApiError(422, f"'{name}' must be a plain form field, not a file")
    return str(value)


def _boolean(form: FormData, name: str) -> bool | None:
    value = _text(form, name).strip().lower()
    if value == "":
        return None
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ApiError(422, f"'{name}' must be true or false, got {value!r}")


def _too_large(max_bytes: int) -> str:
    return f"the upload is over the {max_bytes // (1024 * 1024)} MB limit; send a smaller or shorter file"
