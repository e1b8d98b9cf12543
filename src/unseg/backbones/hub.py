"""Weight downloads that end in bounded time, whatever the network does.

``create_backbone(..., download=True)`` fetches inside :func:`hub_access`: timm's hub
weights through huggingface_hub, torchvision's and torch.hub's through urllib. Two ways a
download can hang are bounded there:

- no network: one connection attempt to the hub first; when it fails and no proxy is set,
  the Hugging Face hub goes offline (files in its cache still load) and sockets give up
  after ``connect_timeout`` seconds, instead of the hub's retries with back-off;
- a network or proxy that accepts the connection and never answers: every request waits at
  most ``timeout`` seconds (:data:`DOWNLOAD_TIMEOUT`) for the server, urllib's through the
  socket default timeout and the hub client's through its request timeouts, and the hub's
  client may not retry a request that got no answer (its retries wait a minute each): the
  block ends in a :class:`DownloadStalled` naming the URL.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.error import URLError

from ..errors import WeightsError

__all__ = ["HUB_HOST", "DOWNLOAD_TIMEOUT", "DownloadStalled", "hub_access"]

HUB_HOST = "huggingface.co"
"""timm's hub: the host the offline check tries."""
DOWNLOAD_TIMEOUT = 30.0
"""Seconds a download may wait for its server: to connect, and for each answer."""
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
_TIMEOUT_KEYS = ("connect", "read", "write", "pool")  # httpx's per-request timeouts


class DownloadStalled(WeightsError):
    """A server or proxy that accepted the connection, then sent nothing within the timeout."""


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


def _timed_out(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, is a timeout: the socket's, urllib's
    (a ``URLError`` around one) or httpx's (``TimeoutException``, found by name: huggingface_hub
    versions ship different httpx packages)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if (
            isinstance(exc, TimeoutError)
            or (isinstance(exc, URLError) and isinstance(exc.reason, TimeoutError))
            or any(cls.__name__ == "TimeoutException" for cls in type(exc).__mro__)
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class _HubRequests:
    """Event hooks on the hub's HTTP client for one block: each request's timeouts capped, and the
    request still waiting for its answer remembered, so that a retry of a stalled one stops."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.waiting: tuple[str, float] | None = None  # (URL, start) of the last request, until answered

    def on_request(self, request: Any) -> None:
        url, now = str(request.url), time.monotonic()
        if self.waiting is not None and self.waiting[0] == url and now - self.waiting[1] >= self.timeout:
            raise _stalled(url, self.timeout)  # it waited out the timeout unanswered: the client is retrying it
        self.waiting = url, now
        given = request.extensions.get("timeout", {})
        request.extensions["timeout"] = {
            key: min(given.get(key) or self.timeout, self.timeout) for key in _TIMEOUT_KEYS
        }

    def on_response(self, response: Any) -> None:
        self.waiting = None


def _stalled(url: str, timeout: float) -> DownloadStalled:
    return DownloadStalled(
        f"{url} sent no answer within {timeout:g} s: the network (or a proxy) accepted the "
        "connection, then sent nothing"
    )


@contextmanager
def hub_access(host: str = HUB_HOST, connect_timeout: float = 3.0, timeout: float | None = None) -> Iterator[None]:
    """Weight downloads inside this block end within seconds offline, and within about ``timeout``
    seconds (default :data:`DOWNLOAD_TIMEOUT`) of silence from a server that accepted the connection.

    Behind a proxy (``HTTPS_PROXY``, ``ALL_PROXY``) the offline check is skipped (the proxy decides
    where a connection goes); the timeouts hold all the same.
    """
    import huggingface_hub
    import huggingface_hub.constants as hub

    timeout = DOWNLOAD_TIMEOUT if timeout is None else timeout
    offline = not any(os.environ.get(v) for v in _PROXY_VARIABLES) and not _can_connect(host, 443, connect_timeout)
    requests = _HubRequests(timeout)
    session = huggingface_hub.get_session()
    hooks = session.event_hooks
    session.event_hooks = {
        "request": [*hooks["request"], requests.on_request],
        "response": [*hooks["response"], requests.on_response],
    }
    was_offline, default_timeout = hub.HF_HUB_OFFLINE, socket.getdefaulttimeout()
    hub.HF_HUB_OFFLINE = was_offline or offline
    socket.setdefaulttimeout(connect_timeout if offline else timeout)
    try:
        yield
    except Exception as exc:
        if offline or isinstance(exc, WeightsError) or not _timed_out(exc):
            raise
        raise _stalled("the download server", timeout) from None  # urllib's timeouts do not say which URL
    finally:
        session.event_hooks = hooks
        hub.HF_HUB_OFFLINE = was_offline
        socket.setdefaulttimeout(default_timeout)
