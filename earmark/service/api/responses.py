"""JSON answers rendered by orjson: a cached transcript with its word times is the largest thing
most requests send back, and the standard library's encoder was the largest single cost of an
exact hit after receiving the upload (bench/README.md, "Exact hit against /health")."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as StarletteJSONResponse


class JSONResponse(StarletteJSONResponse):
    """Starlette's JSONResponse, the same compact UTF-8 JSON, encoded by orjson. What orjson
    does not take (a non-string key, an integer over 64 bits, a numpy scalar) falls back to the
    standard encoder, so no answer fails for how it is encoded."""

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:
            return super().render(content)
