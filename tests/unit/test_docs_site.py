"""The guide and the docs site: code in the guide is the code in examples/, the site builds.

tests/process/test_examples.py serves each example and checks the guide shows
what the server sends; this file checks the text itself.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from forkserve.config import file_layer, find_config_file, load
from forkserve.gunicorn_conf import convert, read_gunicorn_file, render_table

REPO = Path(__file__).resolve().parent.parent.parent
DOCS = REPO / "docs"
GUIDE = DOCS / "guide"
EXAMPLES = REPO / "examples"
# ```python title="examples/hello.py" ... ``` : a block that shows (part of) a file.
TITLED_BLOCK = re.compile(r'^```\w* title="([^"]+)"\n(.*?)^```$', re.M | re.S)


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts)


def titled_blocks(page: Path) -> list[tuple[str, str]]:
    return TITLED_BLOCK.findall(page.read_text(encoding="utf-8"))


def test_code_shown_from_examples_is_the_code_in_examples() -> None:
    shown = 0
    for page in pages():
        for title, code in titled_blocks(page):
            if not title.startswith("examples/"):
                continue
            source = (REPO / title).read_text(encoding="utf-8")
            assert code in source, f"{page.name} shows code that is not in {title}:\n{code}"
            shown += 1
    assert shown >= 12  # every chapter that shows an example shows it from the file


def test_every_example_is_referenced_from_the_guide() -> None:
    guide = "".join(p.read_text(encoding="utf-8") for p in GUIDE.glob("*.md"))
    for entry in EXAMPLES.iterdir():
        if entry.name.startswith((".", "__")):
            continue
        assert f"examples/{entry.name}" in guide, entry.name


def test_migration_table_is_rendered_from_the_converters_table() -> None:
    text = (GUIDE / "07-migrating.md").read_text(encoding="utf-8")
    table = re.search(r"<!-- gunicorn-settings-table:[^>]*-->\n(.*?)<!-- end gunicorn-settings"
                      r"-table -->", text, re.S)
    assert table is not None
    assert table.group(1) == render_table(), "run: python -c 'from forkserve.gunicorn_conf " \
        "import render_table; print(render_table())' and paste it into 07-migrating.md"


def test_migration_example_is_what_from_gunicorn_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = dict(titled_blocks(GUIDE / "07-migrating.md"))
    (tmp_path / "gunicorn.conf.py").write_text(blocks["gunicorn.conf.py"])
    monkeypatch.chdir(tmp_path)
    printed = convert(read_gunicorn_file("gunicorn.conf.py"))
    # The guide was written on a 2-CPU machine; the file computes 2 * CPUs + 1.
    shown = blocks["forkserve.toml"].replace("workers = 5\n", "workers = {workers}\n")
    assert "{workers}" in shown
    workers = re.search(r"^workers = (\d+)$", printed, re.M)
    assert workers is not None
    assert printed == shown.replace("{workers}", workers.group(1))


def test_every_forkserve_toml_in_the_guide_loads(tmp_path: Path) -> None:
    """A setting the guide shows in a config file is one forkserve has, with a valid value."""
    blocks = [block for page in sorted(GUIDE.glob("*.md"))
              for block in re.findall(r"^```toml[^\n]*\n(.*?)^```$",
                                      page.read_text(encoding="utf-8"), re.M | re.S)]
    assert len(blocks) >= 2
    for block in blocks:
        (tmp_path / "forkserve.toml").write_text(block)
        where = find_config_file(None, str(tmp_path))
        assert where is not None
        _, origin = load({}, {}, file_layer(where, str(tmp_path)))
        assert any(src != "default" for src in origin.values()), block


def test_every_forkserve_command_in_the_guide_uses_real_options() -> None:
    from forkserve.cli import cli

    known = {opt for param in cli.params for opt in param.opts if opt.startswith("-")}
    commands = 0
    for page in sorted(GUIDE.glob("*.md")):
        text = page.read_text(encoding="utf-8").replace("\\\n", " ")
        code = "".join(re.findall(r"^```(?:sh|text)\n(.*?)^```$", text, re.M | re.S))
        for line in re.findall(r"^(?:\$ )?forkserve (.*)$", code, re.M):
            commands += 1
            for word in shlex.split(line.split("#")[0].rstrip("& ")):
                if word.startswith("-") and word != "-":  # "-" alone is stdout
                    assert word.split("=")[0] in known, f"{page.name}: forkserve {line}"
    assert commands >= 10


def test_navigation_covers_every_page_once() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))

    def entries(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, list):
            return [e for item in nav for e in entries(item)]
        if isinstance(nav, dict):
            return [e for value in nav.values() for e in entries(value)]
        return []

    listed = entries(config["nav"])
    assert sorted(listed) == sorted(str(p.relative_to(DOCS)) for p in pages())
    assert len(listed) == len(set(listed))


def test_readme_sends_readers_to_the_guide() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "](docs/guide/index.md)" in readme


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed")
def test_site_builds_strict(tmp_path: Path) -> None:
    """No broken links or anchors, no page outside the navigation (mkdocs.yml validation)."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "guide" / "01-what-is-wsgi" / "index.html").is_file()
    assert (tmp_path / "site" / "_repo" / "contrib" / "nginx" / "forkserve.conf").is_file()
