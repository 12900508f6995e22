"""mkdocs hook: publish the repository files the docs link to, so links work on the site.

The pages are written to be read on GitHub too, where a link such as
`../contrib/nginx/forkserve.conf` reaches a file outside `docs/`. mkdocs only
knows `docs/`, so `--strict` would call those links broken. This hook copies
each such file into the site under `_repo/` (Markdown files as `.txt`, so they
are shown as they are rather than built as pages that no navigation reaches)
and rewrites the links to the copies. A link to a repository directory
becomes its plain text; a link to a path that does not exist is left alone,
so `--strict` still reports it.

Runs at build time only (`mkdocs build` / `mkdocs serve`), never in forkserve.
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import Any

from mkdocs.structure.files import File, Files, InclusionLevel

PREFIX = "_repo"
# [text](target) where target is relative (no scheme, no leading / or #).
LINK = re.compile(r"\[([^\]]*)\]\((?![a-z][a-z0-9+.-]*:|/|#)([^)\s]+)\)")


def _outside(page_uri: str, target: str, root: str) -> tuple[str, str] | None:
    """(path in the repository, #fragment) when `target` leaves docs/; else None."""
    path, _, fragment = target.partition("#")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(page_uri), path))
    if not resolved.startswith("../"):
        return None
    repo_path = resolved[3:]
    if not os.path.exists(os.path.join(root, repo_path)):
        return None  # a broken link: leave it for --strict to report
    return repo_path, fragment


def _published(repo_path: str) -> str:
    return f"{PREFIX}/{repo_path}" + (".txt" if repo_path.endswith(".md") else "")


def on_files(files: Files, config: Any) -> Files:
    root = os.path.dirname(config.config_file_path)
    wanted: set[str] = set()
    for file in files.documentation_pages():
        for _text, target in LINK.findall(file.content_string):
            found = _outside(file.src_uri, target, root)
            if found and os.path.isfile(os.path.join(root, found[0])):
                wanted.add(found[0])
    for repo_path in sorted(wanted):
        copy = File.generated(config, _published(repo_path),
                              abs_src_path=os.path.join(root, repo_path))
        copy.inclusion = InclusionLevel.INCLUDED  # even a dotfile (.dockerignore)
        files.append(copy)
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    root = os.path.dirname(config.config_file_path)
    here = posixpath.dirname(page.file.src_uri)

    def rewrite(match: re.Match[str]) -> str:
        text, target = match.groups()
        found = _outside(page.file.src_uri, target, root)
        if found is None:
            return match.group(0)
        repo_path, fragment = found
        if os.path.isdir(os.path.join(root, repo_path)):
            return text
        link = posixpath.relpath(_published(repo_path), here or ".")
        if fragment and not repo_path.endswith(".md"):
            link += "#" + fragment
        return f"[{text}]({link})"

    return LINK.sub(rewrite, markdown)
