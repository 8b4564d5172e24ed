"""Bearer tokens with scopes ``read`` < ``build`` < ``admin``.

The tokens file has one token per line: ``TOKEN SCOPE[,SCOPE...] [NAME]``;
blank lines and ``#`` comments are ignored. A higher scope includes the lower
ones. With no tokens file the service accepts only loopback clients and needs
no token (and says so at start).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Scope", "Token", "TokenTable", "AuthFailure", "load_tokens", "SCOPES"]

SCOPES = ("read", "build", "admin")
_PLACEHOLDERS = {"changeme", "change-me", "token", "secret", "password", "xxx", "todo"}
_MIN_TOKEN_LENGTH = 16

Scope = str


@dataclass(frozen=True)
class Token:
    name: str
    digest: str  # sha256 of the token; the token itself is not kept
    scopes: frozenset[str]


class AuthFailure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _expand(scopes: set[str]) -> frozenset[str]:
    level = max(SCOPES.index(s) for s in scopes)
    return frozenset(SCOPES[: level + 1])


class TokenTable:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def authorize(self, header: str | None, scope: Scope) -> Token:
        """The token of an ``Authorization`` header if it grants ``scope``; else AuthFailure."""
        if not header:
            raise AuthFailure(401, "missing bearer token: send 'Authorization: Bearer <token>'")
        kind, _, value = header.partition(" ")
        if kind.lower() != "bearer" or not value.strip():
            raise AuthFailure(401, "malformed Authorization header: expected 'Bearer <token>'")
        digest = _digest(value.strip())
        for token in self.tokens:
            if hmac.compare_digest(token.digest, digest):
                if scope not in token.scopes:
                    raise AuthFailure(
                        403, f"token {token.name!r} lacks the {scope!r} scope (it has: {', '.join(sorted(token.scopes))})"
                    )
                return token
        raise AuthFailure(401, "unknown token")


def load_tokens(path: Path | None) -> TokenTable:
    """Parse a tokens file; refuses placeholder or short tokens and unknown scopes."""
    if path is None:
        return TokenTable([])
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"cannot read the tokens file {path}: {exc}") from exc
    tokens: list[Token] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(f"{path}:{number}: expected 'TOKEN SCOPES [NAME]'")
        value, scope_text = parts[0], parts[1]
        name = parts[2] if len(parts) > 2 else f"line {number}"
        scopes = {s.strip() for s in scope_text.split(",") if s.strip()}
        unknown = scopes - set(SCOPES)
        if unknown or not scopes:
            raise ValueError(f"{path}:{number}: unknown scope(s) {sorted(unknown)}; use {', '.join(SCOPES)}")
        if value.lower() in _PLACEHOLDERS or len(value) < _MIN_TOKEN_LENGTH:
            raise ValueError(
                f"{path}:{number}: token {name!r} is a placeholder or shorter than {_MIN_TOKEN_LENGTH} "
                "characters; generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        tokens.append(Token(name=name, digest=_digest(value), scopes=_expand(scopes)))
    if not tokens:
        raise ValueError(f"the tokens file {path} defines no tokens")
    return TokenTable(tokens)
