"""Refuse every network connection in this process, to prove a run needs no internet (as on Kaggle)."""
from __future__ import annotations

import socket


class NetworkBlocked(OSError):
    """Raised by any attempt to connect or resolve a host after `block_network()`."""


def _refuse(*args, **kwargs):
    raise NetworkBlocked("network access is blocked (--block-network): the kernel must run offline")


def block_network() -> None:
    """Make socket connects and host look-ups raise `NetworkBlocked` for the rest of the process."""
    socket.socket.connect = _refuse
    socket.socket.connect_ex = _refuse
    socket.create_connection = _refuse
    socket.getaddrinfo = _refuse
