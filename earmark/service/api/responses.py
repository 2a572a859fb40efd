"""JSON answers rendered by orjson: a cached transcript with its word times is the largest thing
most requests send back, and the standard library's encoder was the largest single cost of an
exact hit after receiving the upload (bench/README.md, "Exact hit against /health")."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as StarletteJSONResponse


# Keys that are numbers and numpy values are written as the standard encoder would write a
# number key and a float (it cannot write numpy values at all).
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


class JSONResponse(StarletteJSONResponse):
    """Starlette's JSONResponse, the same compact UTF-8 JSON, encoded by orjson. What orjson
    does not take (an integer over 64 bits) falls back to the standard encoder."""

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=_OPTIONS)
        except TypeError:
            return super().render(content)
