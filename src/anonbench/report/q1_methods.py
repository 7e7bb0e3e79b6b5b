"""Q1: does training on realistic anonymization beat non-realistic methods (the comparison classes)?"""

from __future__ import annotations

from anonbench.config import ORIGINAL
from anonbench.report import charts
from anonbench.report.context import (
    ANON_COMBINATIONS,
    COMBINATIONS,
    STATS,
    Context,
    methods_of,
    missing_models,
    scaled,
    significance,
)
from anonbench.report.doc import Document


def q1_methods(doc: Document, ctx: Context) -> None:
    """Q1: the four combinations per method on the comparison classes, AP and AP50, and the differences."""
    section = "Q1"
    doc.heading("Q1: Does training on realistic anonymization beat non-realistic methods?")
    cfg = ctx.cfg
    size, base = ctx.org_on_org()
    if size is None or base is None:
        missing_models(doc, f"the Org model's evaluation on original data (`metrics/eval/{ORIGINAL}-<size>_on_org`)")
        return
    classes = cfg.classes.comparison
    methods = methods_of(ctx.study)
    found = {m: {name: ctx.combination(m, size, name) for name in COMBINATIONS} for m in methods}
    doc.paragraph(
        f"Size {size}, the {len(classes)} comparison classes of the earlier non-realistic study (params "
        f"classes.comparison): mean AP and AP50 over those classes with ground truth, per method and combination."
    )
    if ctx.check_void(doc, section, [base, *(r for combos in found.values() for r in combos.values())]):
        return
    doc.table(
        ["method", *(f"{name}\n{stat}" for name in COMBINATIONS for stat in STATS)],
        [[m, *(ctx.ap(found[m][name], classes, stat) for name in COMBINATIONS for stat in STATS)] for m in methods],
    )
    doc.paragraph("The same as differences from Org on Org, in points:")
    doc.table(
        ["method", *(f"{name}\nΔ {stat}" for name in ANON_COMBINATIONS for stat in STATS)],
        [[m, *(ctx.linked_delta(found[m][name], base, classes, stat) for name in ANON_COMBINATIONS for stat in STATS)]
         for m in methods],
    )  # fmt: skip
    on_org = {ORIGINAL: base, **{m: found[m]["Anon on Org"] for m in methods}}
    doc.paragraph("AP per comparison class of each model on the original validation images (Org on Org, and each "
                  "method's Anon on Org):")  # fmt: skip
    doc.table(
        ["class", "Org on Org", *(f"{m}: Anon on Org" for m in methods)],
        [[c, *(ctx.ap(e, [c]) for e in on_org.values())] for c in classes],
    )
    path = charts.grouped_bars(
        classes,
        {("Org on Org" if v == ORIGINAL else f"{v}: Anon on Org"): [scaled(e.ap([c])) if e else None for c in classes]
         for v, e in on_org.items()},
        f"AP per comparison class on original val, size {size}",
        "AP (%)",
        ctx.figures / "q1_comparison_classes.png",
    )  # fmt: skip
    ctx.figure(doc, path, f"Q1: AP per comparison class, Org on Org and each method's Anon on Org (size {size}).")
    answers = []
    for m in methods:
        delta = ctx.delta(found[m]["Anon on Org"], base, classes)
        answers.append(f"{m}: Anon on Org {delta.text()} ({significance(delta)})")
    answer = "; ".join(answers) or "n/a"
    doc.paragraph(f"**Answer (comparison classes, Anon on Org minus Org on Org, AP points):** {answer}.")
