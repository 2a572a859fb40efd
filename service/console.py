"""The web console: upload audio and see how each file was answered, browse recent
recognitions and their entries, and the audit charts, served by `earmark serve` itself.

Server-rendered pages (Starlette's Jinja2 templates, `console_templates/`) with a little
JavaScript (`console_static/`: a hand-written `console.js` and htmx, vendored). The upload page
calls the JSON API the way any client does (/lookup for the evidence, then /recognize), so the
console shows exactly what the API answers. History, entry and audit pages read the store.

When an admin token is configured, the pages that show other callers' transcripts (history,
entries, audit) and the Delete button ask for it once, and keep it in an HttpOnly, SameSite
Strict cookie; /entries/... itself keeps checking its Bearer header as before.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=str(HERE / "console_templates"))
STATIC_DIR = HERE / "console_static"
ADMIN_COOKIE = "earmark_admin"
PAGE_SIZE = 25


def console_routes() -> list[BaseRoute]:
    """The console's routes, mounted beside the API's (none of them clash with the contract's)."""
    return [
        Route("/", upload_page, methods=["GET"]),
        Route("/console/login", login, methods=["GET", "POST"]),
        Mount("/console/static", app=StaticFiles(directory=str(STATIC_DIR)), name="console_static"),
    ]


def _render(request: Request, template: str, status_code: int = 200, **context) -> Response:
    """A page of the console, counted by page in earmark_console_pages_total."""
    services = request.app.state.services
    services.metrics.console_pages.labels(page=template.removesuffix(".html")).inc()
    context.setdefault("engine", services.engine)
    context.setdefault("admin_required", bool(services.settings.admin_token))
    context.setdefault("keys_required", services.api_keys is not None)
    context.setdefault("nav", "")
    return TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)


async def upload_page(request: Request) -> Response:
    """GET /: the upload form, with the options the configured engine accepts."""
    services = request.app.state.services
    caps = services.engine.capabilities
    return _render(request, "upload.html", nav="upload", caps=caps, thresholds=services.settings.fuzzy,
                   languages=sorted(caps.languages), itn_choices=list(caps.itn))


def is_admin(request: Request) -> bool:
    """True when no admin token is configured, or the request carries it (cookie or Bearer)."""
    token = request.app.state.services.settings.admin_token
    if not token:
        return True
    supplied = request.cookies.get(ADMIN_COOKIE, "")
    header = request.headers.get("authorization", "")
    if header.startswith("Bearer "):
        supplied = header.removeprefix("Bearer ")
    return secrets.compare_digest(supplied.encode(), token.encode())


def login_page(request: Request, status_code: int = 401, message: str = "") -> Response:
    """The admin-token form, answered in place of a page that needs it."""
    return _render(request, "login.html", status_code=status_code, message=message,
                   next_url=request.url.path + (f"?{request.url.query}" if request.url.query else ""))


async def login(request: Request) -> Response:
    """GET/POST /console/login: check the admin token and keep it in a cookie for the console."""
    if request.method == "GET":
        return login_page(request, status_code=200)
    form = await request.form()
    token = str(form.get("token", ""))
    next_url = str(form.get("next", "/console/history"))
    if not next_url.startswith("/") or next_url.startswith("//"):
        next_url = "/console/history"  # never redirect off this site
    expected = request.app.state.services.settings.admin_token
    if not expected or not secrets.compare_digest(token.encode(), expected.encode()):
        return _render(request, "login.html", status_code=401, message="That is not the admin token.", next_url=next_url)
    response = RedirectResponse(next_url, status_code=303)
    response.set_cookie(ADMIN_COOKIE, token, httponly=True, samesite="strict", path="/")
    return response


def ttl_text(expires_at_ms: int, now: float | None = None) -> str:
    """How long an entry has left, for people: '6 d 23 h', '59 min', 'expired'."""
    if not expires_at_ms:
        return "no expiry"
    left = expires_at_ms / 1000.0 - (time.time() if now is None else now)
    if left <= 0:
        return "expired"
    days, rest = divmod(int(left), 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{max(minutes, 1)} min"


TEMPLATES.env.filters["ttl"] = ttl_text
TEMPLATES.env.filters["when"] = lambda epoch: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else ""
