"""The documentation pages shipped inside the package, printed by ``unseg docs [TOPIC]``.

The Markdown files of ``unseg/docs/`` are the one copy of the documentation: the site
(``make docs``) is built from them, and every install carries them, so help texts and
docstrings cite ``unseg docs TOPIC``, a page a pip user has, never a path in the repository.
"""

from __future__ import annotations

import sys
from importlib import resources
from typing import TYPE_CHECKING

from .registry import Registry

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = ["topics", "page", "topics_table"]

INDEX = "README.md"  # the site's home page, not a topic


def _pages() -> Registry[Traversable]:
    pages: Registry[Traversable] = Registry("documentation topic")
    for file in (resources.files("unseg") / "docs").iterdir():
        if file.is_file() and file.name.endswith(".md") and file.name != INDEX:
            pages.add(file.name[: -len(".md")], file)
    return pages


def topics() -> dict[str, str]:
    """Topic name -> the page's title (its first heading), sorted by name."""
    pages = _pages()
    titles = {}
    for name in pages.names():
        lines = pages.get(name).read_text(encoding="utf-8").splitlines()
        titles[name] = next((line[2:].strip() for line in lines if line.startswith("# ")), "")
    return titles


def page(topic: str) -> str:
    """The Markdown text of ``topic`` (a name from :func:`topics`); an unknown name fails listing the known ones."""
    return _pages().get(topic).read_text(encoding="utf-8")


def topics_table() -> str:
    """Every topic with its title, one line each (``unseg docs``)."""
    titles = topics()
    width = max(map(len, titles), default=0)
    return "\n".join(
        [f"{name:{width}s}  {title}" for name, title in titles.items()] + ["", "`unseg docs TOPIC` prints a page"]
    )
