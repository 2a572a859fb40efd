"""API keys, each mapped to a namespace: who may call the recognition endpoints, and whose
cache they see.

The keys file (`--api-keys FILE`, setting `api_keys_file`) holds one `<key> <namespace>` per
line; blank lines and `#` comments are skipped. Several keys may share a namespace (a team's
keys, an old key during rotation). Keys are kept only as SHA-256 digests, and a presented key's
digest is compared with every stored one by `hmac.compare_digest`, never stopping early: how
long a check takes says nothing about how close a guess came.

A namespace is a hard partition of the cache: it is part of the profile (service/pipeline/profile.py),
so of every alias key, entry id and vector-index partition.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from earmark.service.api.errors import ApiError
from earmark.service.config import ConfigError

# A namespace goes into the profile, logs and docs; a short plain name keeps it readable there.
NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A shorter key is guessable; OpenAI's own keys are far longer.
MIN_KEY_CHARS = 16


class AuthError(ApiError):
    """The request carries no usable API key (a 401 asking for a bearer token); the message
    says what to send."""

    def __init__(self, msg: str) -> None:
        super().__init__(401, msg, headers={"WWW-Authenticate": "Bearer"})


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class ApiKeys:
    """The configured keys (as digests) and the namespace each one opens."""

    entries: tuple[tuple[bytes, str], ...]

    @classmethod
    def from_text(cls, text: str, source: str = "the API keys file") -> "ApiKeys":
        """Parse `<key> <namespace>` lines; raise `ConfigError` naming the bad line (never
        echoing the key itself)."""
        entries: list[tuple[bytes, str]] = []
        seen: set[bytes] = set()
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ConfigError(f"{source} line {number}: expected '<key> <namespace>', got {len(parts)} field(s)")
            key, namespace = parts
            if len(key) < MIN_KEY_CHARS:
                raise ConfigError(f"{source} line {number}: the key is shorter than {MIN_KEY_CHARS} characters")
            if not NAMESPACE.fullmatch(namespace):
                raise ConfigError(f"{source} line {number}: namespace {namespace[:70]!r} must be 1 to 64 letters, "
                                  f"digits, '.', '_' or '-', starting with a letter or digit")
            digest = _digest(key)
            if digest in seen:
                raise ConfigError(f"{source} line {number}: this key is listed twice")
            seen.add(digest)
            entries.append((digest, namespace))
        if not entries:
            raise ConfigError(f"{source} lists no keys: every request would be refused")
        return cls(tuple(entries))

    @classmethod
    def from_file(cls, path: str | Path) -> "ApiKeys":
        """Read and parse a keys file; raise `ConfigError` when it cannot be read or is malformed."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the API keys file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"the API keys file {path} is not UTF-8 text") from exc
        return cls.from_text(text, f"API keys file {path}")

    @property
    def namespaces(self) -> set[str]:
        """Every configured namespace."""
        return {namespace for _, namespace in self.entries}

    def namespace_of(self, key: str) -> str | None:
        """The namespace `key` opens, or None for an unknown key.

        Compares the key's digest with every stored digest, whatever matched before: the time
        taken depends on the number of keys only."""
        presented = _digest(key)
        found: str | None = None
        for digest, namespace in self.entries:
            if hmac.compare_digest(presented, digest):
                found = namespace
        return found

    def authenticate(self, authorization: str | None) -> str:
        """The namespace of a request's `Authorization: Bearer <key>` header; raise `AuthError`
        when it is missing, malformed or names no configured key."""
        scheme, _, key = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthError("this endpoint needs an API key: send 'Authorization: Bearer <key>'")
        namespace = self.namespace_of(key.strip())
        if namespace is None:
            raise AuthError("the API key is not valid; check the key sent in 'Authorization: Bearer <key>'")
        return namespace


def is_admin_token(supplied: str, admin_token: str) -> bool:
    """Whether `supplied` is the admin token, compared in constant time (`secrets.compare_digest`);
    False when no admin token is configured."""
    return bool(admin_token) and secrets.compare_digest(supplied.encode(), admin_token.encode())


def is_admin_bearer(authorization: str | None, admin_token: str) -> bool:
    """Whether an `Authorization` header is exactly `Bearer <admin token>`."""
    header = authorization or ""
    return header.startswith("Bearer ") and is_admin_token(header.removeprefix("Bearer "), admin_token)


def keys_without_admin(api_keys: ApiKeys | None, admin_token: str) -> bool:
    """API keys configured (namespaces are a hard partition) but no admin token: nothing that
    shows every namespace (entries, the audit, the console's history) can be opened safely."""
    return api_keys is not None and not admin_token
