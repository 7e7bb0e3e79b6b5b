"""The report's sections in reading order, and the document they make with the header in front."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from anonbench.config import Config
from anonbench.report.context import Context
from anonbench.report.coverage import coverage_section
from anonbench.report.doc import Block, Document
from anonbench.report.figure6 import figure6
from anonbench.report.header import header
from anonbench.report.q1_methods import q1_methods
from anonbench.report.q2_families import q2_families
from anonbench.report.q2_size import q2_size
from anonbench.report.q3_matrix import q3_matrix
from anonbench.report.q4_ssim import q4_ssim
from anonbench.report.q5_grid import q5_grid
from anonbench.report.q6_q7_freeze import q6_q7_freeze
from anonbench.report.q8_relabel import q8_relabel
from anonbench.report.q9_privacy import q9_privacy
from anonbench.study import RunLinks, Study

SECTIONS: tuple[Callable[[Document, Context], None], ...] = (
    q1_methods,
    q2_size,
    q2_families,
    q3_matrix,
    q4_ssim,
    q5_grid,
    figure6,
    q6_q7_freeze,
    q8_relabel,
    q9_privacy,
    coverage_section,
)


def build(cfg: Config, study: Study, links: RunLinks) -> tuple[Document, list[Path]]:
    """The report document and the figures it shows (written under ``reports/figures/``).

    The sections are built first so that the header can say which of them are void. Each section that
    cites runs ends with a link to MLflow's compare view on exactly those runs.
    """
    ctx = Context(study, links, cfg.paths.reports / "figures")
    body = Document()
    for section in SECTIONS:
        links.section = []
        section(body, ctx)
        if link := links.compare():
            body.paragraph(link)
    doc = Document()
    header(doc, ctx)
    blocks: list[Block] = [*doc.blocks, *body.blocks]
    return Document(blocks), ctx.made
