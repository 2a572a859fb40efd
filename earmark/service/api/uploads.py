"""Receive a multipart upload as a stream, with every limit enforced while the bytes arrive.

A public endpoint gets whatever anyone sends: a chunked body with no Content-Length, a body
that trickles in a byte at a time, a client that hangs up halfway, a form with two files. The
body is therefore parsed as it arrives (python-multipart's streaming parser), and a request is
refused the moment it breaks a limit, having kept nothing. The `file` part is hashed as it
arrives, so the exact tier needs no second pass over it, and spooled: in memory while small,
in a temporary file beyond that, removed when the request ends (the `Spool` and the `Upload` it
becomes are the pipeline's: service/pipeline/upload.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header
from python_multipart.exceptions import MultipartParseError
from starlette.requests import ClientDisconnect, Request

from earmark.fingerprint.canonical import BytesHasher
from earmark.service.engines.base import RecognitionOptions
from earmark.errors import quoted
from earmark.service.api.errors import ApiError
from earmark.service.pipeline.upload import Spool, Upload

MULTIPART_SLACK = 64 * 1024  # boundary lines and small fields around the file part
MAX_PARTS = 36  # the documented 4 files and 32 fields
MAX_FIELD_BYTES = 64 * 1024
FILE_FIELD = "file"
# Fields a client may repeat (OpenAI's `timestamp_granularities[]`); any other repeated field
# is ambiguous (language=en and language=zh: which profile?) and refused.
_LIST_FIELD = re.compile(r".*\[\]$")
# The contract's text fields (docs/api.md, "Text fields"): a file part under one of these names is
# refused (422) as it arrives, on every endpoint, whether or not that endpoint reads the field;
# `model` and `temperature` are read by none (they change nothing), so only this catches them.
TEXT_FIELDS = frozenset({"language", "use_itn", "hotwords", "prompt", "response_format", "model", "temperature",
                         "stream", "timestamp_granularities", "timestamp_granularities[]"})
# The parser logs a warning for every malformed body: anyone could fill the log. The 400 says it.
logging.getLogger("python_multipart").setLevel(logging.ERROR)


class UploadAborted(Exception):
    """The client went away before its upload arrived: nothing to answer, nothing to keep."""


@dataclass(frozen=True)
class UploadLimits:
    """How large, how slow and how many uploads the service takes (settings, read once)."""

    max_bytes: int
    timeout_s: float = 600.0
    # After `grace_s`, the body must keep arriving at this average rate or the request is cut
    # off: a connection trickling a byte now and then holds nothing for long.
    min_bytes_per_s: float = 16 * 1024
    grace_s: float = 10.0


@dataclass
class UploadForm:
    """A request's form: its text fields (each a list, in order) beside the names sent as files."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    file_names: set[str] = field(default_factory=set)

    def text(self, name: str) -> str:
        """The one value of text field `name` ("" when absent); a file or a repeat is a 422."""
        if name in self.file_names:
            raise ApiError(422, f"'{name}' must be a plain form field, not a file")
        values = self.fields.get(name, [])
        if len(values) > 1:
            raise ApiError(422, f"'{name}' was sent {len(values)} times; send it once")
        return values[0] if values else ""

    def getlist(self, name: str) -> list[str]:
        """Every value of a repeatable text field."""
        if name in self.file_names:
            raise ApiError(422, f"'{name}' must be a plain form field, not a file")
        return list(self.fields.get(name, []))


class UploadGate:
    """Bounds how many uploads may be arriving at once; beyond it a request gets 503."""

    def __init__(self, max_in_progress: int, on_change=None) -> None:
        self.max_in_progress = max_in_progress
        self.in_progress = 0
        self._on_change = on_change or (lambda count: None)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot while the body arrives (the event loop is single-threaded: no lock)."""
        if self.in_progress >= self.max_in_progress:
            raise ApiError(
                503, f"{self.in_progress} uploads are already arriving, the most this server takes at once; "
                "retry after 2 s", headers={"Retry-After": "2"},
            )
        self.in_progress += 1
        self._on_change(self.in_progress)
        try:
            yield
        finally:
            self.in_progress -= 1
            self._on_change(self.in_progress)


async def read_upload(request: Request, limits: UploadLimits, gate: UploadGate | None = None) -> tuple[Upload, UploadForm]:
    """Receive the request's form and its `file` part, or raise an `ApiError` (or
    `UploadAborted` when the client hangs up). The caller closes the returned `Upload`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_bytes + MULTIPART_SLACK:
        raise ApiError(413, _too_large(limits.max_bytes))
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise ApiError(400, "send the audio as multipart/form-data with the file in a field named 'file'")
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise ApiError(400, "the multipart Content-Type has no usable boundary; send a well-formed form")
    receiver = _FormReceiver(limits)
    with (gate.slot() if gate is not None else nullcontext()):
        try:
            await receiver.receive(request, boundary)
        except BaseException:
            receiver.discard()
            raise
    return receiver.result()


class _FormReceiver:
    """Feeds the body to the multipart parser chunk by chunk, keeping only what the form needs."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.form = UploadForm()
        self._parts = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._name = ""
        self._kind = ""  # "file" (the audio), "field" (text), "ignored" (another file part)
        self._value = bytearray()
        self._spool: Spool | None = None
        self._hasher = BytesHasher()
        self._size = 0
        self._file_done = False
        self._ended = False

    async def receive(self, request: Request, boundary: bytes) -> None:
        parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        })
        loop = asyncio.get_running_loop()
        started = loop.time()
        received = 0
        try:
            async with asyncio.timeout(started + self.limits.grace_s) as deadline:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > self.limits.max_bytes + MULTIPART_SLACK:
                        raise ApiError(413, _too_large(self.limits.max_bytes))
                    if chunk:
                        parser.write(chunk)
                    deadline.reschedule(self._deadline(started, received))
        except TimeoutError:
            raise ApiError(408, self._too_slow(received, loop.time() - started)) from None
        except ClientDisconnect:
            raise UploadAborted() from None
        except MultipartParseError as exc:
            raise ApiError(400, f"the multipart body could not be read ({_short(exc)}); send a well-formed form") from None
        if not self._ended:
            raise ApiError(400, "the multipart body ended before its closing boundary; send the whole form")

    def _deadline(self, started: float, received: int) -> float:
        """When the body must have advanced by: its average rate may not fall under the
        minimum after the grace period, and the whole body must arrive within the timeout."""
        by_rate = started + max(self.limits.grace_s, received / self.limits.min_bytes_per_s)
        return min(by_rate, started + self.limits.timeout_s)

    def _too_slow(self, received: int, elapsed: float) -> str:
        if elapsed >= self.limits.timeout_s - 0.01:
            return (f"the upload did not arrive within {self.limits.timeout_s:.0f} s ({received} bytes came); "
                    "send a smaller file or use a faster connection")
        return (f"the upload stalled: {received} bytes arrived in {elapsed:.0f} s, under the minimum of "
                f"{self.limits.min_bytes_per_s / 1024:.0f} KiB/s; send the body without pausing")

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise ApiError(400, f"the form has more than {MAX_PARTS} parts; send the file and a few fields")
        self._disposition = b""
        self._value.clear()

    def _header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        raw_name = options.get(b"name")
        if raw_name is None:
            raise ApiError(400, "a form part has no name in its Content-Disposition; send a well-formed form")
        self._name = raw_name.decode("utf-8", errors="replace")
        if self._name == FILE_FIELD:
            if self._spool is not None:
                raise ApiError(422, "the form has more than one 'file' part; send one audio file per request")
            self._kind = "file"
            self._spool = Spool()
        elif b"filename" in options:
            if self._name in TEXT_FIELDS:
                raise ApiError(422, f"'{self._name}' must be a plain form field, not a file")
            self._kind = "ignored"
            self.form.file_names.add(self._name)
        else:
            self._kind = "field"

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._kind == "file":
            piece = memoryview(data)[start:end]  # no copy: the spool keeps the chunk itself
            self._size += len(piece)
            if self._size > self.limits.max_bytes:
                raise ApiError(413, _too_large(self.limits.max_bytes))
            self._hasher.update(piece)
            assert self._spool is not None
            self._spool.write(piece)
        elif self._kind == "field":
            if len(self._value) + (end - start) > MAX_FIELD_BYTES:
                raise ApiError(422, f"field {quoted(self._name)} is over {MAX_FIELD_BYTES // 1024} KiB; send a shorter value")
            self._value.extend(data[start:end])

    def _part_end(self) -> None:
        if self._kind == "file":
            self._file_done = True
        elif self._kind == "field":
            try:
                text = self._value.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(422, f"field {quoted(self._name)} is not UTF-8 text; send it encoded as UTF-8") from None
            values = self.form.fields.setdefault(self._name, [])
            if values and not _LIST_FIELD.fullmatch(self._name):
                raise ApiError(422, f"field {quoted(self._name)} was sent more than once; send it once")
            values.append(text)
        self._kind = ""

    def _end(self) -> None:
        self._ended = True

    def result(self) -> tuple[Upload, UploadForm]:
        if self._spool is None or not self._file_done:
            self.discard()
            raise ApiError(400, "no file in the form; send the audio in a multipart field named 'file'")
        return Upload(self._spool, self._hasher.hexdigest(), self._size), self.form

    def discard(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None


def recognition_options(form: UploadForm) -> RecognitionOptions:
    """Parse the optional recognition fields shared by the endpoints."""
    hotwords = form.text("hotwords").strip()
    return RecognitionOptions(
        language=form.text("language") or None,
        use_itn=_boolean(form, "use_itn"),
        hotwords=tuple(re.split(r"[\s,]+", hotwords)) if hotwords else (),
        prompt=form.text("prompt"),
    )


def _boolean(form: UploadForm, name: str) -> bool | None:
    value = form.text(name).strip().lower()
    if value == "":
        return None
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ApiError(422, f"'{name}' must be true or false, got {quoted(value)}")


def _too_large(max_bytes: int) -> str:
    return f"the upload is over the {max_bytes / (1024 * 1024):g} MiB limit; send a smaller or shorter file"


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
