"""The web console: upload audio and see how each file was answered, browse recent
recognitions and their entries, and the audit charts, served by `earmark serve` itself.

Server-rendered pages (Starlette's Jinja2 templates, `templates/`) with a little
JavaScript (`static/`: a hand-written `console.js` and htmx, vendored). The upload page
calls the JSON API the way any client does (/lookup for the evidence, then /recognize), so the
console shows exactly what the API answers. History, entry and audit pages read the store.

When an admin token is configured, the pages that show other callers' transcripts (history,
entries, audit) and the Delete button ask for it once and then keep a signed session (never the
token: service/console/session.py) in an HttpOnly, SameSite Strict cookie, Secure over https,
that expires after `console_session_s`; "Sign out" (POST /console/logout) clears it. A Bearer
header with the token itself works on these pages too; /entries/... keeps checking only that.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from earmark.index.breaker import StoreUnavailable
from earmark.index.entry import ENTRY_ID
from earmark.index.operator_reads import entry_size_bytes
from earmark.service.api.auth import is_admin_bearer, is_admin_token, keys_without_admin
from earmark.service.ops.audit import AuditOptions, collect_audit
from earmark.service.ops.audit_cache import delete_and_forget
from earmark.service.console.session import check_session, issue_session
from earmark.service.pipeline.events import TIERS
from earmark.service.console.history import HITS_SCAN_LIMIT, SEARCH_SCAN_LIMIT, entry_hits, history_page

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))
STATIC_DIR = HERE / "static"
ADMIN_COOKIE = "earmark_admin"
PAGE_SIZE = 25
TIER_COLOURS = {"exact": "#2f8f4e", "canonical": "#1f8a80", "fuzzy": "#6b3fc4", "negative": "#8a94a3", "partial": "#3f7fc4",
                "miss": "#d98a00", "bypass": "#c0392b"}


def console_routes() -> list[BaseRoute]:
    """The console's routes, mounted beside the API's (none of them clash with the contract's)."""
    return [
        Route("/", upload_page, methods=["GET"]),
        Route("/console/login", login, methods=["GET", "POST"]),
        Route("/console/logout", logout, methods=["POST"]),
        Route("/console/history", history, methods=["GET"]),
        Route("/console/entry/{entry_id}", entry_page, methods=["GET"]),
        Route("/console/entry/{entry_id}/delete", delete_entry, methods=["POST"]),
        Route("/console/audit", audit, methods=["GET"]),
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
    context.setdefault("signed_in", _session_state(request) == "ok")
    response = TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)
    # Never framed by another site: a framed entry page would let it trick a click on Delete.
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
    return response


async def upload_page(request: Request) -> Response:
    """GET /: the upload form, with the options the configured engine accepts."""
    services = request.app.state.services
    caps = services.engine.capabilities
    return _render(request, "upload.html", nav="upload", caps=caps, thresholds=services.settings.fuzzy,
                   languages=sorted(caps.languages), itn_choices=list(caps.itn))


async def history(request: Request) -> Response:
    """GET /console/history: recent recognitions, newest first, paged (`before`), searchable (`q`).
    An htmx request (the search box) gets the results fragment only."""
    if (refusal := _admin_refusal(request)) is not None:
        return refusal
    services = request.app.state.services
    query = request.query_params.get("q", "")[:200]
    before = request.query_params.get("before") or None
    if before is not None and not re.fullmatch(r"\d{1,20}-\d{1,20}", before):
        before = None
    try:
        page = await history_page(services.events, services.store, count=PAGE_SIZE, before=before, query=query)
    except StoreUnavailable:
        return _store_down(request, "history")
    template = "_history_results.html" if request.headers.get("hx-request") else "history.html"
    return _render(request, template, nav="history", page=page, before=before, query=query,
                   scan_limit=SEARCH_SCAN_LIMIT, deleted=request.query_params.get("deleted", "")[:32])


async def entry_page(request: Request) -> Response:
    """GET /console/entry/{id}: one entry's transcript, facts and the hits it served."""
    if (refusal := _admin_refusal(request)) is not None:
        return refusal
    services = request.app.state.services
    entry_id = request.path_params["entry_id"]
    if not ENTRY_ID.fullmatch(entry_id):
        return _not_found(request, entry_id[:40])
    try:
        entry = await services.store.get_entry(entry_id)
        if entry is None:
            return _not_found(request, entry_id)
        hits = await entry_hits(services.events, entry_id)
        size = await entry_size_bytes(services.store, entry_id)
    except StoreUnavailable:
        return _store_down(request, "entry")
    latest = hits.events[0][1] if hits.events else None
    return _render(request, "entry.html", nav="history", entry=entry, hits=hits, size_bytes=size, latest=latest,
                   scan_limit=HITS_SCAN_LIMIT, tiers=TIERS)


async def delete_entry(request: Request) -> Response:
    """POST /console/entry/{id}/delete: what DELETE /entries/{id} does, for the console's button
    (the admin token's cookie when one is configured; refused from another site's page)."""
    services = request.app.state.services
    if (refusal := _admin_refusal(request)) is not None:
        return refusal
    if not _same_origin(request):
        return _render(request, "message.html", status_code=403, heading="Refused",
                       message="A delete must come from this console's own page.")
    entry_id = request.path_params["entry_id"]
    if not ENTRY_ID.fullmatch(entry_id):
        return _not_found(request, entry_id[:40])
    try:
        deleted = await delete_and_forget(services.store, services.audits, entry_id,
                                          stream_maxlen=services.settings.stream_maxlen)
    except StoreUnavailable:
        return _store_down(request, "delete")
    if not deleted:
        return _not_found(request, entry_id)
    services.metrics.console_pages.labels(page="delete").inc()
    return RedirectResponse(f"/console/history?deleted={entry_id}", status_code=303)


async def audit(request: Request) -> Response:
    """GET /console/audit: the dedup audit of `earmark audit` and GET /audit (service/ops/audit.py's
    collect_audit, the same data) drawn as charts: answers per tier over time, engine time saved
    and spent, fuzzy hits near the threshold each with its stretch curve, near-duplicate entries."""
    if (refusal := _admin_refusal(request)) is not None:
        return refusal
    services = request.app.state.services
    threshold = services.settings.fuzzy.min_window_score
    options = AuditOptions(review_margin=services.settings.review_margin, hits_limit=0)
    try:
        report = await services.audits.get(("the web console", options), lambda: collect_audit(
            services.store, services.events, services.settings.fuzzy, options, source="the web console"))
    except StoreUnavailable:
        return _store_down(request, "audit")
    over_time = report["tiers_over_time"]
    for row in over_time["rows"]:
        row["label"] = _bucket_label(row["start"], over_time["bucket_s"])
    for near in report["near_threshold"]:
        near["chart"] = curve_chart(near["curve"], threshold)
    return _render(request, "audit.html", nav="audit", report=report, over_time=over_time,
                   summary=report["summary"], threshold=threshold, margin=options.review_margin,
                   cache_s=services.settings.audit_cache_s,
                   colours=TIER_COLOURS, tiers=[tier for tier in TIERS if tier in over_time["tiers"]])


def _bucket_label(iso: str, bucket_s: int) -> str:
    """An axis label for a bucket starting at `iso` (UTC): its time of day, or its date."""
    return iso[11:19] if bucket_s < 60 else iso[11:16] if bucket_s < 86400 else iso[5:10]


def curve_chart(curve: list, threshold: float, width: int = 520, height: int = 150) -> dict | None:
    """SVG geometry of a stretch-score curve ([[start s, score], ...]) against the threshold:
    the polyline's points, the threshold's y, the worst point and the axis ticks."""
    if not curve:
        return None
    left, right, top, bottom = 40, 10, 10, 24
    end = max(curve[-1][0] + 1.0, 1.0)
    low = min(0.5, threshold - 0.1, *(score for _, score in curve))

    def x(t: float) -> float:
        return round(left + t / end * (width - left - right), 1)

    def y(v: float) -> float:
        return round(top + (1 - (v - low) / (1 - low)) * (height - top - bottom), 1)

    worst = min(curve, key=lambda point: point[1])
    step = 10 if end > 20 else 2 if end > 8 else 1
    return {"width": width, "height": height, "left": left, "right": width - right,
            "points": " ".join(f"{x(t)},{y(v)}" for t, v in curve),
            "dots": [(x(t), y(v), t, v) for t, v in curve],
            "threshold_y": y(threshold), "worst": (x(worst[0]), y(worst[1]), worst[0], worst[1]),
            "y_ticks": [(y(v), f"{v:.2f}") for v in (low, (low + 1) / 2, 1.0)],
            "x_ticks": [(x(t), f"{t:g} s") for t in range(0, int(end) + 1, step)], "bottom": height - 8}


def _same_origin(request: Request) -> bool:
    """The form was posted from a page of this console (the Origin header, else the Referer):
    its host is the request's Host, or the first X-Forwarded-Host (a reverse proxy that rewrites
    Host, e.g. to 127.0.0.1:8000, names there the host the browser asked for).

    Trusting X-Forwarded-Host here keeps CSRF out: the attack is a page of another site making
    the signed-in browser post a form here, and such a post carries that site's Origin, which
    matches neither header, while the attacking page cannot set X-Forwarded-Host at all (no
    form can set a header, and a cross-site fetch with it needs a CORS preflight this service
    never grants). Whoever can set headers freely (curl) sends no victim's cookie with them."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return True  # not a browser's cross-site form post: those always carry an Origin
    netloc = urlsplit(source).netloc
    if not netloc:
        return False  # "null" (a sandboxed or privacy-redirected page) or a relative Referer
    forwarded = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
    return netloc == request.headers.get("host", "") or (forwarded != "" and netloc == forwarded)


def _not_found(request: Request, entry_id: str) -> Response:
    return _render(request, "message.html", status_code=404, heading="No such entry", nav="history",
                   message=f"There is no entry {entry_id}: it never existed, expired, was evicted or was deleted.")


def _store_down(request: Request, page: str) -> Response:
    return _render(request, "message.html", status_code=503, heading="The store is unreachable", nav=page,
                   message="History and entries live in the cache store, which does not answer right now. "
                           "Recognition still works (uncached); try this page again shortly.")


def _admin_refusal(request: Request) -> Response | None:
    """None when this request may see every caller's transcripts; else the page to answer
    instead: the admin-token form, or, with API keys configured but no admin token (namespaces
    are a hard partition, and no one could sign in), a refusal that says how to open them."""
    services = request.app.state.services
    if keys_without_admin(services.api_keys, services.settings.admin_token):
        return _render(request, "message.html", status_code=403, heading="An admin token is needed",
                       message="This service keeps each API key's namespace apart, and history, entries and the audit "
                               "would show every namespace's transcripts. Start it with --admin-token to use these pages.")
    if is_admin(request):
        return None
    state = _session_state(request)
    if state in ("expired", "invalid"):
        request.app.state.services.metrics.console_sessions_refused.labels(reason=state).inc()
        return login_page(request, message="Your sign-in has expired; enter the admin token again." if state == "expired" else "")
    return login_page(request)


def is_admin(request: Request) -> bool:
    """True when no admin token is configured, or the request carries a valid session cookie
    or the token itself as `Authorization: Bearer <token>`."""
    token = request.app.state.services.settings.admin_token
    if not token:
        return True
    header = request.headers.get("authorization", "")
    if header.startswith("Bearer "):
        return is_admin_bearer(header, token)
    return _session_state(request) == "ok"


def _session_state(request: Request) -> str:
    """The request's session cookie checked (console_session.check_session), or "missing"
    when no admin token is configured (there is nothing to sign in to)."""
    token = request.app.state.services.settings.admin_token
    return check_session(request.cookies.get(ADMIN_COOKIE, ""), token) if token else "missing"


def login_page(request: Request, status_code: int = 401, message: str = "") -> Response:
    """The admin-token form, answered in place of a page that needs it (then back to that page)."""
    return _render(request, "login.html", status_code=status_code, message=message,
                   next_url=request.url.path + (f"?{request.url.query}" if request.url.query else ""))


def _local_path(next_url: str) -> str:
    """`next_url` when it is a path on this site, else the history page: never redirect off it."""
    if not next_url.startswith("/") or next_url.startswith("//") or "\\" in next_url:
        return "/console/history"
    return next_url


async def login(request: Request) -> Response:
    """GET/POST /console/login: check the admin token and keep a signed session (not the token)
    in a cookie, Secure when the request came over https."""
    services = request.app.state.services
    if request.method == "GET":
        signed_out = request.query_params.get("signed_out") == "1"
        return _render(request, "login.html", message="You are signed out." if signed_out else "", message_ok=signed_out,
                       next_url=_local_path(request.query_params.get("next", "/console/history")))
    form = await request.form()
    token = str(form.get("token", ""))
    next_url = _local_path(str(form.get("next", "/console/history")))
    expected = services.settings.admin_token
    if not is_admin_token(token, expected):
        services.metrics.console_logins.labels(outcome="wrong_token").inc()
        return _render(request, "login.html", status_code=401, message="That is not the admin token.", next_url=next_url)
    services.metrics.console_logins.labels(outcome="ok").inc()
    lifetime_s = services.settings.console_session_s
    response = RedirectResponse(next_url, status_code=303)
    response.set_cookie(ADMIN_COOKIE, issue_session(expected, lifetime_s), max_age=int(lifetime_s), path="/",
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


async def logout(request: Request) -> Response:
    """POST /console/logout: clear the session cookie (refused from another site's page) and go
    back to the sign-in form."""
    if not _same_origin(request):
        return _render(request, "message.html", status_code=403, heading="Refused",
                       message="Signing out must come from this console's own page.")
    request.app.state.services.metrics.console_pages.labels(page="logout").inc()
    response = RedirectResponse("/console/login?signed_out=1", status_code=303)
    response.delete_cookie(ADMIN_COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
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
TEMPLATES.env.filters["ago"] = lambda epoch: _ago(time.time() - epoch)


def _ago(seconds: float) -> str:
    """'just now', '5 min ago', '3 h ago', '2 d ago'."""
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} d ago"
