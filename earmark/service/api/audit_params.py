"""`GET /audit`'s query parameters: which hits the audit lists, refused with a clear 400."""

from __future__ import annotations

from collections.abc import Mapping

from earmark.service.ops.audit import AuditOptions
from earmark.service.api.errors import ApiError

LIMITS = {"top": (1, 1000), "hits": (0, 100_000)}


def audit_options(params: Mapping[str, str], review_margin: float) -> AuditOptions:
    """`?review_margin=0.05&top=20&hits=1000`, each optional (the service's review margin, the 20
    most reused entries, the newest 1000 hits by default)."""
    unknown = sorted(set(params) - {"review_margin", *LIMITS})
    if unknown:
        raise ApiError(400, f"unknown parameter(s) {', '.join(unknown)[:80]}; known: review_margin, top, hits")
    counts = {}
    for name, (low, high) in LIMITS.items():
        if name in params:
            try:
                counts[name] = int(params[name])
            except ValueError:
                raise ApiError(400, f"{name} must be a whole number, not {params[name][:40]!r}") from None
            if not low <= counts[name] <= high:
                raise ApiError(400, f"{name} must be between {low} and {high}")
    if "review_margin" in params:
        try:
            review_margin = float(params["review_margin"])
        except ValueError:
            raise ApiError(400, f"review_margin must be a number, not {params['review_margin'][:40]!r}") from None
        if not 0.0 <= review_margin <= 1.0:
            raise ApiError(400, "review_margin must be between 0 and 1")
    defaults = AuditOptions()
    return AuditOptions(review_margin=review_margin, top=counts.get("top", defaults.top),
                        hits_limit=counts.get("hits", defaults.hits_limit))
