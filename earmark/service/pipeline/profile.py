"""The recognition profile: everything that changes a transcript.

Two requests share cached results only when their profiles are equal, so the profile's digest
is part of every alias key and of every entry id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import cached_property


@dataclass(frozen=True)
class Profile:
    """The resolved engine, model and options a transcript was produced with."""

    engine: str
    model: str
    revision: str
    language: str
    use_itn: bool
    hotwords: tuple[str, ...] = ()
    prompt: str = ""
    namespace: str = ""

    @cached_property
    def digest(self) -> str:
        """Stable short digest of the profile, used in keys and entry ids."""
        canonical = json.dumps(asdict(self), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.blake2b(canonical.encode(), digest_size=12).hexdigest()
