"""The documentation a pip user has: `unseg docs [TOPIC]` prints the pages shipped in the package,
and no help text, error or docstring cites a repository path the install lacks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import unseg
from unseg.cli import main
from unseg.pages import topics

PACKAGE = Path(unseg.__file__).parent
PAGES = sorted(p for p in (PACKAGE / "docs").glob("*.md") if p.name != "README.md")


def test_docs_without_topic_lists_every_page_with_its_title(capsys):
    assert main(["docs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line.split(maxsplit=1)[1] for line in lines if line and not line.startswith("`")}
    assert set(listed) == {p.stem for p in PAGES} and len(listed) >= 7
    assert listed["upsampling"] == "Dense features at image resolution, and STEGO's label-free shifts"
    assert "README" not in listed  # the site's home page is not a topic


def test_docs_topic_prints_the_page(capsys):
    assert main(["docs", "upsampling"]) == 0
    assert capsys.readouterr().out == (PACKAGE / "docs" / "upsampling.md").read_text(encoding="utf-8")


def test_unknown_topic_is_one_line_naming_the_topics(capsys):
    assert main(["docs", "upsample"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err and err.startswith("unseg: error: ") and "'upsample'" in err
    assert all(p.stem in err for p in PAGES)


def _source_files() -> list[Path]:
    return [p for p in PACKAGE.rglob("*") if p.suffix in {".py", ".yaml", ".md"}]


def test_no_text_in_the_package_cites_a_repository_docs_path():
    """Help strings, errors, docstrings, config comments and the pages themselves: ``docs/x.md`` is a
    path `pip install unseg` does not have; ``unseg docs x`` is the citation that works."""
    cited = [
        f"{p.relative_to(PACKAGE)}: {m.group(0)}"
        for p in _source_files()
        for m in re.finditer(r"docs/\w+\.md", p.read_text(encoding="utf-8"))
    ]
    assert cited == []


def test_every_unseg_docs_citation_names_a_topic():
    known = set(topics())
    cited = {
        (p.relative_to(PACKAGE).as_posix(), m.group(1))
        for p in _source_files()
        for m in re.finditer(r"unseg docs ([a-z_]+)", p.read_text(encoding="utf-8"))
    }
    assert len(cited) > 20  # the help texts and docstrings do cite pages
    assert [c for c in cited if c[1] not in known] == []


def test_the_wheel_carries_the_pages(tmp_path):
    """What a pip user gets: every topic page in the built wheel; the site-only API pages are not."""
    pytest.importorskip("setuptools")
    root = PACKAGE.parent.parent
    if not (root / "pyproject.toml").is_file():
        pytest.skip("not a source checkout")
    project = tmp_path / "project"
    shutil.copytree(root / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, project / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(project),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("unseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"unseg/docs/{p.name}" for p in PAGES} <= names
    assert "unseg/pages.py" in names and not any(n.startswith("unseg/docs/api/") for n in names)
