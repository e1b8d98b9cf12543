"""A griffe extension for the docs site: the docstrings' Sphinx roles become cross-references.

The docstrings write ``:class:`Source``` (readable in ``help()``); mkdocstrings reads Markdown.
Each role becomes an autorefs link to its target, resolved the way Python resolves the name
where the docstring stands (the object's own members, its parents', the module's imports), so
``mkdocs build --strict`` fails on a reference to something the site does not document.
Targets outside unseg (``torch.nn.Module``) become code.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([\w.]+)`")
PAGE = re.compile(r"``unseg docs ([a-z_]+)``")  # a shipped page (unseg.pages): on the site, a link to it


def _resolve(obj: griffe.Object, name: str) -> str | None:
    """The full path ``name`` means in ``obj``'s docstring, or None outside the package."""
    if name.startswith("."):  # relative to the docstring's package, as in an import
        module = obj.module
        package = module.path if module.is_package else module.path.rpartition(".")[0]
        level = len(name) - len(name.lstrip("."))
        base = package.rsplit(".", level - 1)[0] if level > 1 else package
        return f"{base}.{name.lstrip('.')}"
    first, _, rest = name.partition(".")
    if first == obj.package.name:  # already a full path
        return name
    scope: griffe.Object | None = obj
    while scope is not None:
        found = scope.members.get(first)
        if found is not None:
            path = found.target_path if isinstance(found, griffe.Alias) else found.path
            return f"{path}.{rest}" if rest else path
        if isinstance(scope, griffe.Module) and first in scope.imports:
            path = scope.imports[first]
            return f"{path}.{rest}" if rest else path
        scope = scope.parent
    return None


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring of the package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: object) -> None:
        self._rewrite(pkg, pkg.path)

    def _rewrite(self, obj: griffe.Object, package: str) -> None:
        if obj.docstring is not None:

            def link(match: re.Match[str]) -> str:
                short, name = match.group(1), match.group(2)
                shown = name.rpartition(".")[2] if short else name.lstrip(".")
                path = _resolve(obj, name)
                if path is None or not (path == package or path.startswith(package + ".")):
                    return f"`{shown}`"
                return f"[`{shown}`][{path}]"

            text = ROLE.sub(link, obj.docstring.value)
            obj.docstring.value = PAGE.sub(r"[`unseg docs \1`](../\1.md)", text)  # every API page is in api/
        for member in obj.members.values():
            if not isinstance(member, griffe.Alias):
                self._rewrite(member, package)
