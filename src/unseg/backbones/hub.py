"""Weight downloads that fail within seconds on a machine without internet."""
from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["HUB_HOST", "hub_access"]

HUB_HOST = "huggingface.co"  # timm's hub; torchvision's downloads go through urllib and the socket timeout
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _can_connect(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds, name lookup included
    (run in a thread: a lookup without a reachable name server can block far longer)."""
    opened: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)


@contextmanager
def hub_access(host: str = HUB_HOST, timeout: float = 3.0) -> Iterator[None]:
    """Weight downloads inside this block fail within seconds on a machine without internet.

    One connection attempt to ``host`` first; when it fails, the Hugging Face hub is put in
    offline mode (files already in its cache still load) and sockets time out after
    ``timeout`` seconds, instead of the hub's retries with back-off (about a minute). Behind a
    proxy (``HTTPS_PROXY``, ``ALL_PROXY``) nothing is changed: the proxy decides.
    """
    if any(os.environ.get(v) for v in _PROXY_VARIABLES) or _can_connect(host, 443, timeout):
        yield
        return
    import huggingface_hub.constants as hub

    offline, default_timeout = hub.HF_HUB_OFFLINE, socket.getdefaulttimeout()
    hub.HF_HUB_OFFLINE = True
    socket.setdefaulttimeout(timeout)
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = offline
        socket.setdefaulttimeout(default_timeout)
