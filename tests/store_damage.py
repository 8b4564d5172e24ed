"""Damage entries of the embedded (diskcache) store the way a disk would, for healing tests.

diskcache keeps a value of 32 KiB or more in a file under the store folder
and a smaller one in its SQLite row; :func:`damage` flips bytes in either
place, without the store noticing the write.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path


def _db(store_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(Path(store_dir) / "db" / "cache.db", timeout=30)


def location(store_dir: Path, key: str) -> Path | None:
    """The file holding the value of ``key``, or None when the value lives in its SQLite row."""
    with _db(store_dir) as db:
        row = db.execute("SELECT filename FROM Cache WHERE key = ?", (key,)).fetchone()
    assert row is not None, f"no entry {key!r}"
    return Path(store_dir) / "db" / row[0] if row[0] else None


def rewrite(store_dir: Path, key: str, change: Callable[[bytes], bytes]) -> str:
    """Apply ``change`` to the stored bytes of ``key`` in place; "file" or "row", where they were."""
    path = location(store_dir, key)
    if path is not None:
        path.write_bytes(change(path.read_bytes()))
        return "file"
    db = _db(store_dir)
    try:
        (value,) = db.execute("SELECT value FROM Cache WHERE key = ?", (key,)).fetchone()
        if isinstance(value, str):
            new: bytes | str = change(value.encode()).decode("utf-8", "replace")
        else:
            new = change(bytes(value))
        db.execute("UPDATE Cache SET value = ? WHERE key = ?", (new, key))
        db.commit()
    finally:
        db.close()
    return "row"


def flip_tail(data: bytes) -> bytes:
    """Same length, last 64 bytes overwritten: what a torn write or bad sector leaves."""
    return data[:-64] + bytes(b ^ 0x5A for b in data[-64:])


def edit_json(data: bytes) -> bytes:
    """Still valid JSON, different text: only the stored digest can tell."""
    text = data.decode()
    i = text.rindex('"sha256": "') + len('"sha256": "')
    return (text[:i] + ("0" if text[i] != "0" else "1") + text[i + 1 :]).encode()
