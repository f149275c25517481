"""What the benchmarks share: putting their tables into docs/BENCHMARKS.md and docs/QUALITY.md."""

from __future__ import annotations

import re
from pathlib import Path


def replace_section(doc: str, text: str) -> str:
    """``doc`` with the section ``text`` starts with (its ``## `` heading line) replaced by ``text``, or with
    ``text`` appended when there is no such section yet."""
    heading = text.split("\n", 1)[0]
    pattern = re.compile("^" + re.escape(heading) + r"\n.*?(?=^## |\Z)", re.S | re.M)
    return pattern.sub(lambda _: text.rstrip() + "\n\n", doc) if pattern.search(doc) else doc.rstrip() + "\n\n" + text


def write_section(path: Path, text: str, title: str) -> None:
    """Put the section ``text`` into the document at ``path`` (made with ``# title`` when missing)."""
    doc = path.read_text() if path.exists() else f"# {title}\n\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(doc, text).rstrip() + "\n")
