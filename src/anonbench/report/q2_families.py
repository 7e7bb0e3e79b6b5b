"""Q2, across detectors: does the answer depend on the detector family (a study that trains more than YOLOv10)?"""

from __future__ import annotations

from anonbench.config import ORIGINAL
from anonbench.report.context import ANON_COMBINATIONS, SIZE_ORDER, Context, methods_of, significance
from anonbench.report.doc import Document
from anonbench.study import EvalRecord

SECTION = "Q2"


def q2_families(doc: Document, ctx: Context) -> None:
    """Each family's change from its own Org on Org, per method and combination, and whether the families agree.

    Shown only when the study evaluated more than one family; every other question is asked of YOLOv10.
    A family "disagrees" when, for one method and combination, one family's interval lies above zero and
    another's below: the sign of the answer then depends on the detector.
    """
    families = ctx.study.families
    if len(families) < 2:
        return
    doc.heading("Does the answer depend on the detector?", level=3)
    methods = methods_of(ctx.study)
    cells = [(m, name) for m in methods for name in ANON_COMBINATIONS]
    rows, used = [], list[EvalRecord | None]()
    signs: dict[tuple[str, str], dict[str, int]] = {cell: {} for cell in cells}
    for family in families:
        sizes = sorted({e.model_size for e in ctx.study.evaluations if e.family == family}, key=SIZE_ORDER.index)
        for size in sizes:
            base = ctx.combination(ORIGINAL, size, "Org on Org", family)
            row, used = [f"{family} {size}", ctx.ap(base)], [*used, base]
            for method, name in cells:
                record = ctx.combination(method, size, name, family)
                used.append(record)
                row.append(ctx.linked_delta(record, base))
                delta = ctx.delta(record, base)
                if significance(delta) == "interval excludes 0" and delta.low is not None:
                    signs[(method, name)][f"{family} {size}"] = 1 if delta.low > 0 else -1
            rows.append(row)
    doc.paragraph(f"Families evaluated: {', '.join(families)}. AP (%) of each family's Org on Org, and each "
                  "combination's change from it in points with its bootstrap interval (train.families; "
                  "docs/model-grid.md).")  # fmt: skip
    if ctx.check_void(doc, SECTION, used, "the detector comparison"):
        return
    doc.table(["family, size", "Org on Org", *(f"{m}: {n} − Org on Org" for m, n in cells)], rows)
    flipped = [f"{m}: {n}" for (m, n), found in signs.items() if len(set(found.values())) > 1]
    if flipped:
        doc.paragraph(f"**Answer:** yes for {'; '.join(flipped)}: one family's interval lies above zero and "
                      "another's below.")  # fmt: skip
    else:
        doc.paragraph("**Answer:** no combination's change has intervals on both sides of zero across the "
                      "families; where an interval includes 0, that family does not decide the sign.")  # fmt: skip
