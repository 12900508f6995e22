"""`forkserve --help`: grouped like docs/settings.md, generated from the declarations."""

from __future__ import annotations

import re

from click.testing import CliRunner

from forkserve.cli import cli
from forkserve.config import SETTINGS, flag_of
from forkserve.docs import render_settings_md


def help_text() -> str:
    result = CliRunner().invoke(cli, ["--help"], prog_name="forkserve")
    assert result.exit_code == 0, result.output
    return result.output


def test_help_groups_options_under_the_settings_page_headings_in_its_order() -> None:
    text = help_text()
    page_sections = re.findall(r"^## (.+)$", render_settings_md(), re.M)
    headings = re.findall(r"^(\S[^:\n]*):$", text, re.M)
    assert headings == [*page_sections, "Configuration and help"]
    # Each setting's flag is listed under its own section's heading.
    starts = {h: text.index(f"\n{h}:\n") for h in headings}
    ends = dict(zip(headings, [*list(starts.values())[1:], len(text)], strict=True))
    for name, (_field, meta) in SETTINGS.items():
        if not meta.flags:
            continue
        block = text[starts[meta.section]:ends[meta.section]]
        assert re.search(rf"(^|[ ,]){re.escape(flag_of(name))}\b", block, re.M), (name, block)


def test_help_ends_with_example_invocations() -> None:
    text = help_text()
    examples = text[text.index("Examples:"):]
    assert text.index("Examples:") > text.index("\nConfiguration and help:\n")
    commands = re.findall(r"^\s+(forkserve .+?)(?:\s{2,}|$)", examples, re.M)
    assert len(commands) >= 5
    assert any("--print-config" in c for c in commands)
    assert any("create_app()" in c for c in commands)
