"""How ``flexsn-cache serve`` runs uvicorn: the HTTP protocol and the event loop.

* **TCP_NODELAY on every connection.** asyncio sets it only on sockets whose
  ``proto`` is ``IPPROTO_TCP``; with ``--http-workers`` > 1 uvicorn binds the
  listening socket itself as ``socket(AF_INET)`` (proto 0), so the accepted
  connections kept Nagle's algorithm on: a blob's last partial segment waited
  for the client's delayed ACK, and every 37 kB blob GET took 44 ms (22 req/s
  on one connection; manifests, a few full segments long, did not show it).
  uvloop sets it itself; the protocols here set it whatever the loop.
* **httptools and uvloop** when installed (the ``[service]`` extra installs
  them): uvicorn's pure-Python h11 parser and asyncio's loop cost several times
  more per request than the read fast path itself.
"""

from __future__ import annotations

import importlib.util
import socket
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["NoDelayH11", "http_protocol", "loop_name"]


def _no_delay(transport: Any) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # the connection is already gone: the protocol finds out on its own
            pass


class NoDelayH11(H11Protocol):
    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        _no_delay(transport)
        super().connection_made(transport)


if importlib.util.find_spec("httptools") is not None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class NoDelayHttpTools(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            _no_delay(transport)
            super().connection_made(transport)

    __all__ += ["NoDelayHttpTools"]


def http_protocol() -> str:
    """uvicorn's ``http`` setting: an import string, so that worker processes import it themselves."""
    name = "NoDelayHttpTools" if "NoDelayHttpTools" in globals() else "NoDelayH11"
    return f"{__name__}:{name}"


def loop_name() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
