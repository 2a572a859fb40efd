"""The transport's own floor for an upload: an ASGI app under the same uvicorn (uvloop,
httptools) that reads a request's whole body and answers a small JSON, and nothing else.

bench_service.py times POSTs of the same multipart bodies to it beside earmark's exact hits and
/health, so the exact-hit ratio can be read against what merely receiving the bytes costs on the
same machine in the same run.

    python bench/transport_floor.py PORT
"""

from __future__ import annotations

import sys

import uvicorn

ANSWER = b'{"code":0,"msg":"received"}'


async def app(scope, receive, send) -> None:
    """Read every body chunk, count the bytes, answer a fixed JSON."""
    if scope["type"] != "http":
        return
    received, more = 0, True
    while more:
        message = await receive()
        received += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"x-received", str(received).encode())]})
    await send({"type": "http.response.body", "body": ANSWER})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
