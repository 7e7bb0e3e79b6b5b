"""A small document model rendered twice: Markdown beside its figures, and one self-contained HTML file.

The report is built once as headings, paragraphs, tables and figures whose
text uses three inline marks (``[text](url)``, ``**bold**``, backquoted code);
both renderings come from the same blocks, so they never disagree. The HTML
embeds every figure as base64 and carries its own style: it opens anywhere,
offline, as one file.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
figure { margin: 1rem 0; }
img { max-width: 100%; }
figcaption { font-size: 0.85rem; color: #555; }
.missing { background: #fff4e5; border-left: 4px solid #f0a030; padding: 0.4rem 0.8rem; }
.note { background: #eef4fb; border-left: 4px solid #1a5fb4; padding: 0.4rem 0.8rem; }
a { color: #1a5fb4; text-decoration: none; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""


@dataclass(frozen=True)
class Heading:
    """A section heading (level 1 is the title)."""

    text: str
    level: int


@dataclass(frozen=True)
class Paragraph:
    """Running text; ``style`` ``note`` sets it apart, ``missing`` says an input was not there."""

    text: str
    style: str = ""


@dataclass(frozen=True)
class Table:
    """A table of inline-marked cells."""

    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Figure:
    """A PNG written under the report's figures folder."""

    path: Path
    caption: str


Block = Heading | Paragraph | Table | Figure


@dataclass
class Document:
    """The report's blocks in reading order."""

    blocks: list[Block] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        """Add a heading."""
        self.blocks.append(Heading(text, level))

    def paragraph(self, text: str) -> None:
        """Add a paragraph."""
        self.blocks.append(Paragraph(text))

    def note(self, text: str) -> None:
        """Add a paragraph set apart from the running text (a caveat)."""
        self.blocks.append(Paragraph(text, style="note"))

    def missing(self, what: str) -> None:
        """Say that an input is missing instead of showing a result."""
        self.blocks.append(Paragraph(f"**Missing:** {what}", style="missing"))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        """Add a table (skipped when it has no rows)."""
        if rows:
            self.blocks.append(Table(header, rows))

    def figure(self, path: Path, caption: str) -> None:
        """Add a figure already written to ``path``."""
        self.blocks.append(Figure(path, caption))

    def markdown(self, base: Path) -> str:
        """Markdown with figures referenced relative to ``base`` (the folder the file goes in)."""
        parts = []
        for block in self.blocks:
            if isinstance(block, Heading):
                parts.append(f"{'#' * block.level} {block.text}")
            elif isinstance(block, Paragraph):
                parts.append(f"> {block.text}" if block.style else block.text)
            elif isinstance(block, Table):
                parts.append(_markdown_table(block))
            else:
                relative = block.path.relative_to(base).as_posix()
                parts.append(f"![{block.caption}]({relative})\n\n*{block.caption}*")
        return "\n\n".join(parts) + "\n"

    def html(self, title: str) -> str:
        """One HTML file with the style and every figure inside it."""
        parts = []
        for block in self.blocks:
            if isinstance(block, Heading):
                parts.append(f"<h{block.level}>{inline_html(block.text)}</h{block.level}>")
            elif isinstance(block, Paragraph):
                css = f' class="{block.style}"' if block.style else ""
                parts.append(f"<p{css}>{inline_html(block.text)}</p>")
            elif isinstance(block, Table):
                parts.append(_html_table(block))
            else:
                data = base64.b64encode(block.path.read_bytes()).decode("ascii")
                caption = inline_html(block.caption)
                parts.append(
                    f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{caption}</figcaption></figure>"
                )
        body = "\n".join(parts)
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
        )


def inline_html(text: str) -> str:
    """HTML for a line of inline-marked text (escaped first, so cell text cannot inject markup)."""
    out = html.escape(text, quote=True)
    out = _LINK.sub(r'<a href="\2">\1</a>', out)
    out = _BOLD.sub(r"<b>\1</b>", out)
    return _CODE.sub(r"<code>\1</code>", out)


def _markdown_table(table: Table) -> str:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---"] + ["---:"] * (len(table.header) - 1)
    return "\n".join([row(table.header), "| " + " | ".join(align) + " |", *(row(r) for r in table.rows)])


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{inline_html(c)}</th>" for c in table.header)
    rows = "".join("<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in r) + "</tr>\n" for r in table.rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody>\n</table>"
