"""Weight downloads end in bounded time with one clear error: on a machine offline, and behind a
network or proxy that accepts the connection and never answers (a server on 127.0.0.1 that does
exactly that). Only loopback addresses: nothing here reaches the network."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants as hf
import pytest

import unseg.backbones.hub as hub
from unseg.backbones import create_backbone
from unseg.backbones.hub import DownloadStalled, hub_access
from unseg.errors import WeightsError

PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
)


@dataclass
class SilentServer:
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte."""

    port: int
    accepted: list[socket.socket] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    server = SilentServer(listener.getsockname()[1])
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                server.accepted.append(listener.accept()[0])
            except OSError:  # the accept timeout: look at ``stop`` again
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server
    stop.set()
    thread.join()
    for conn in server.accepted:
        conn.close()
    listener.close()


@pytest.fixture
def clean_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No proxy, the tests' own hub offline switch off, empty hub and torch caches; urllib and the hub
    client built afresh (both read the proxy variables when built), and again afterwards."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    urllib.request.install_opener(None)
    huggingface_hub.close_session()
    yield tmp_path
    urllib.request.install_opener(None)
    huggingface_hub.close_session()


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_download_without_internet_fails_within_seconds(clean_network, monkeypatch):
    monkeypatch.setattr(hub, "_can_connect", lambda host, port, timeout: False)  # as on a machine offline
    start = time.monotonic()
    with pytest.raises(WeightsError, match="dino_vits16.*Without a working connection"):
        create_backbone("dino_vits16", download=True)
    assert time.monotonic() - start < 5
    assert hf.HF_HUB_OFFLINE is False  # restored for the rest of the process


def test_torch_hub_download_from_a_silent_server_stops_after_the_timeout(clean_network, monkeypatch, silent_server):
    import torch.hub

    monkeypatch.setattr(hub, "_can_connect", lambda host, port, timeout: True)  # as on a machine online
    default_timeout = socket.getdefaulttimeout()
    start = time.monotonic()
    with pytest.raises(DownloadStalled, match="sent no answer within 0.5 s"):
        with hub_access(timeout=0.5):
            torch.hub.load_state_dict_from_url(f"{silent_server.url}/w.pth", model_dir=str(clean_network / "hub"))
    assert time.monotonic() - start < 4
    assert silent_server.accepted  # the connection was accepted: a stall, not a refusal
    assert socket.getdefaulttimeout() == default_timeout and _files(clean_network) == []


@pytest.mark.parametrize(
    "name, source",
    [
        ("dino_vits16", "https://huggingface.co/timm/vit_small_patch16_224.dino/"),  # huggingface_hub (timm)
        ("resnet50", "https://download.pytorch.org/models/resnet50"),  # torchvision (torch.hub, urllib)
    ],
)
def test_download_behind_a_silent_proxy_is_one_clear_error(name, source, clean_network, monkeypatch, silent_server):
    """The proxy accepts and never answers: the error names the backbone and the file, says what to
    do, and comes after about the timeout, not after the hub's minute-long retries."""
    monkeypatch.setattr(hub, "DOWNLOAD_TIMEOUT", 0.5)
    monkeypatch.setenv("HTTPS_PROXY", silent_server.url)
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        create_backbone(name, download=True)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "\n" not in message and f"backbone {name!r}" in message and source in message
    assert "sent no answer within 0.5 s" in message and "download them elsewhere and pass a local file" in message
    assert elapsed < 4, elapsed
    assert silent_server.accepted and _files(clean_network) == []  # no half-written download left
    assert huggingface_hub.get_session().event_hooks["request"][-1].__name__ != "on_request"  # hooks removed
