"""How a manifest is stored: the sha256 of its JSON text in the same value as the text.

    sha256:<64 hex digits>\\n<the manifest as JSON, keys sorted>

One value, so the digest and the text cannot drift apart under concurrent
writers. A value without the prefix was written before manifests carried a
digest; it is still read (every other check applies).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ..errors import ArtifactError
from ..manifest import validate_manifest
from .errors import CorruptEntry

__all__ = ["DIGEST_PREFIX", "envelope", "parse_manifest_text"]

DIGEST_PREFIX = "sha256:"


def envelope(manifest: Mapping[str, Any]) -> str:
    """The stored text of a manifest: digest line, then the JSON (keys sorted)."""
    text = json.dumps(manifest, sort_keys=True)
    return f"{DIGEST_PREFIX}{hashlib.sha256(text.encode()).hexdigest()}\n{text}"


def parse_manifest_text(key: str, stored: object) -> dict[str, Any]:
    """The manifest in a stored value; CorruptEntry (saying why) if it is damaged or invalid."""
    if not isinstance(stored, str):
        raise CorruptEntry(f"manifest {key[:16]}… is stored as {type(stored).__name__}, not text")
    text = stored
    if stored.startswith(DIGEST_PREFIX):
        digest, _, text = stored[len(DIGEST_PREFIX) :].partition("\n")
        if hashlib.sha256(text.encode()).hexdigest() != digest:
            raise CorruptEntry(f"manifest {key[:16]}… does not match the sha256 stored with it")
    try:
        manifest = json.loads(text)
        if not isinstance(manifest, dict):
            raise ArtifactError("not a JSON object")
        validate_manifest(manifest)
    except (ValueError, ArtifactError) as exc:
        raise CorruptEntry(f"manifest {key[:16]}… is unreadable: {exc}") from None
    if manifest.get("key") != key:
        raise CorruptEntry(f"manifest stored under {key[:16]}… names another key")
    return manifest
