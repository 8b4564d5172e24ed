"""Bearer tokens with scopes ``read`` < ``build`` < ``admin``.

The tokens file has one token per line: ``TOKEN SCOPE[,SCOPE...] [NAME]``;
blank lines and ``#`` comments are ignored. A higher scope includes the lower
ones. With no tokens file the service accepts only loopback clients and needs
no token (and says so at start).

A token must look generated (:func:`token_problem`), so that a copied example
file (``REPLACE-WITH-A-GENERATED-TOKEN-1``) or a made-up word never becomes a
working credential. The rule is about form, not a list of bad words.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import math
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Scope", "Token", "TokenTable", "AuthFailure", "load_tokens", "token_problem", "SCOPES"]

SCOPES = ("read", "build", "admin")
MIN_TOKEN_LENGTH = 32
#: The least entropy a token may have, estimated from its length and alphabet.
MIN_TOKEN_BITS = 128
_HOW_TO_GENERATE = "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"

#: Alphabets of token generators, smallest first: hex (secrets.token_hex, openssl rand -hex),
#: base32, base64 / base64url (secrets.token_urlsafe, openssl rand -base64).
_ALPHABETS = (
    (16, re.compile(r"[0-9a-f]+|[0-9A-F]+")),
    (32, re.compile(r"[A-Z2-7]+=*")),
    (64, re.compile(r"[A-Za-z0-9_-]+|[A-Za-z0-9+/]+=*")),
)
#: Separator-joined words: letters in one case (or Capitalized) or digits between - _ . + / =
_WORD = re.compile(r"[A-Z]+|[a-z]+|[A-Z][a-z]+|[0-9]+")
_SEPARATORS = re.compile(r"[-_.+/=]+")

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


def token_problem(value: str) -> str | None:
    """Why ``value`` is not a usable token, or None. Generated tokens always pass.

    * at least :data:`MIN_TOKEN_LENGTH` characters, from a generator's alphabet
      (hex, base32, base64 or base64url), and at least :data:`MIN_TOKEN_BITS`
      of entropy for that alphabet (32 hex digits, 22 base64 characters);
    * no single character makes up half of it (``aaaa...``);
    * not words joined by separators (``REPLACE-WITH-A-GENERATED-TOKEN-1``,
      ``your_secret_here_...``): three or more parts that are each all letters in
      one case, a capitalized word, or a number. A random base64url token
      splits that way with a probability far below 1e-6 (a long part of random
      characters is almost never one case only), and tests check 20,000 generated
      tokens of each common kind.
    """
    if len(value) < MIN_TOKEN_LENGTH:
        return f"it is {len(value)} characters long; tokens need at least {MIN_TOKEN_LENGTH}"
    alphabet = next((size for size, pattern in _ALPHABETS if pattern.fullmatch(value)), None)
    if alphabet is None:
        return "it has characters no token generator produces (use letters, digits, - and _)"
    bits = len(value) * math.log2(alphabet)
    if bits < MIN_TOKEN_BITS:
        return f"it carries about {bits:.0f} bits; tokens need at least {MIN_TOKEN_BITS}"
    if collections.Counter(value).most_common(1)[0][1] * 2 >= len(value):
        return "one character makes up half of it"
    parts = [p for p in _SEPARATORS.split(value) if p]
    if len(parts) >= 3 and all(_WORD.fullmatch(p) for p in parts):
        return "it is made of words, like a placeholder"
    return None


class TokenTable:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def authenticate(self, header: str | None) -> Token:
        """The token of an ``Authorization`` header; AuthFailure(401) if missing or unknown."""
        if not header:
            raise AuthFailure(401, "missing bearer token: send 'Authorization: Bearer <token>'")
        kind, _, value = header.partition(" ")
        if kind.lower() != "bearer" or not value.strip():
            raise AuthFailure(401, "malformed Authorization header: expected 'Bearer <token>'")
        digest = _digest(value.strip())
        found = None
        for token in self.tokens:  # compare with every token: the time does not tell which matched
            if hmac.compare_digest(token.digest, digest):
                found = token
        if found is None:
            raise AuthFailure(401, "unknown token")
        return found

    def authorize(self, header: str | None, scope: Scope) -> Token:
        """The token of an ``Authorization`` header if it grants ``scope``; else AuthFailure (401/403)."""
        token = self.authenticate(header)
        if scope not in token.scopes:
            raise AuthFailure(
                403, f"token {token.name!r} lacks the {scope!r} scope (it has: {', '.join(sorted(token.scopes))})"
            )
        return token


def load_tokens(path: Path | None) -> TokenTable:
    """Parse a tokens file; refuses tokens that do not look generated, and unknown scopes."""
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
        problem = token_problem(value)
        if problem is not None:
            raise ValueError(
                f"{path}:{number}: token {name!r} does not look generated ({problem}); "
                f"a placeholder must never work as a credential: {_HOW_TO_GENERATE}"
            )
        tokens.append(Token(name=name, digest=_digest(value), scopes=_expand(scopes)))
    if not tokens:
        raise ValueError(f"the tokens file {path} defines no tokens")
    return TokenTable(tokens)
