"""A small document model rendered twice: Markdown beside its figures, and one self-contained HTML file.

The report is built once as headings, paragraphs, tables and figures whose
text uses four inline marks (``[text](url)``, ``**bold**``, backquoted code,
and a newline for a line break inside a table cell); both renderings come from
the same blocks, so they never disagree. A link's text may hold one level of
brackets (``[+1.2 [-0.3, +2.0]](url)``), as CommonMark allows. The HTML embeds
every figure as base64 and carries its own style: it opens anywhere, offline,
as one file, and its tables fit a 1400 px wide window.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

# Link text: characters other than brackets, or one balanced [...] group (an interval).
_LINK = re.compile(r"\[((?:[^\[\]]|\[[^\[\]]*\])+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 80rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.45rem; text-align: right; vertical-align: top; }
th.l, td.l { text-align: left; }
th { background: #f0f0f0; font-weight: 600; }
table.grid { width: 100%; table-layout: fixed; }
table.grid th, table.grid td { text-align: center; font-size: 0.78rem; overflow-wrap: anywhere; }
table.grid td:first-child { text-align: left; font-weight: 600; }
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
    """A table of inline-marked cells; ``style`` ``grid`` centres small multi-line cells (class grids).

    The first ``left`` columns (labels) are aligned left, the others (numbers) right. In a grid, a
    header cell followed by empty ones spans them in the HTML (Markdown has no spans).
    """

    header: list[str]
    rows: list[list[str]]
    style: str = ""
    left: int = 1


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

    def table(self, header: list[str], rows: list[list[str]], style: str = "", left: int = 1) -> None:
        """Add a table (skipped when it has no rows); its first ``left`` columns are labels."""
        if rows:
            self.blocks.append(Table(header, rows, style, left))

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
    return _CODE.sub(r"<code>\1</code>", out).replace("\n", "<br>")


def _markdown_table(table: Table) -> str:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", "<br>") for c in cells) + " |"

    align = ["---"] * table.left + ["---:"] * (len(table.header) - table.left)
    return "\n".join([row(table.header), "| " + " | ".join(align) + " |", *(row(r) for r in table.rows)])


def _html_table(table: Table) -> str:
    def cells(tag: str, row: list[str]) -> str:
        opening = [f'<{tag} class="l">'] * table.left + [f"<{tag}>"] * (len(row) - table.left)
        return "".join(f"{o}{inline_html(c)}</{tag}>" for o, c in zip(opening, row, strict=True))

    head = cells("th", table.header) if table.style != "grid" else _spanned_header(table.header)
    rows = "".join(f"<tr>{cells('td', r)}</tr>\n" for r in table.rows)
    css = f' class="{table.style}"' if table.style else ""
    return f"<table{css}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody>\n</table>"


def _spanned_header(header: list[str]) -> str:
    """Header cells, each spanning the empty cells after it."""
    groups: list[tuple[str, int]] = []
    for cell in header:
        if cell or not groups:
            groups.append((cell, 1))
        else:
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
    return "".join(f'<th colspan="{n}">{inline_html(c)}</th>' for c, n in groups)
