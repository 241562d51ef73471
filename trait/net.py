"""Network helpers: everything TRAIT listens on is on 127.0.0.1 (servers, rendezvous stores, test daemons), or on
Unix sockets in private folders."""

from __future__ import annotations

import os
import socket

SOCKET_PATH_BYTES = 107  # the longest path a Unix socket can have on Linux (sockaddr_un.sun_path, less its NUL)


def socket_name_fits(folder: str | os.PathLike, name_chars: int) -> bool:
    """Whether a Unix socket whose name has ``name_chars`` characters can be made in ``folder``."""
    return len(os.fsencode(folder)) + 1 + name_chars <= SOCKET_PATH_BYTES


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller binds it right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
