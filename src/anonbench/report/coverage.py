"""Anonymization coverage: who was left un-anonymized, and why."""

from __future__ import annotations

from anonbench.report import charts
from anonbench.report.context import Context, fmt
from anonbench.report.doc import Document


def coverage_section(doc: Document, ctx: Context) -> None:
    """Anonymization coverage: who was left un-anonymized, and why."""
    doc.heading("Anonymization coverage: who was left un-anonymized?")
    coverage = ctx.study.coverage
    if not coverage:
        doc.missing("no coverage summary (`data/variants/<method>/coverage_<split>.json`); run `anonbench anonymize`.")
        return
    rows, labels = [], []
    stacks: dict[str, list[float]] = {
        k: [] for k in ("anonymized", "small", "degenerate", "empty segmentation", "other")
    }
    for variant, splits in coverage.items():
        run = ctx.links.find("anonymize", method=variant)
        for split, c in splits.items():
            left = c["persons_gt"] - c["persons_anonymized"]
            rows.append([
                variant, split, str(c["images_with_person"]), ctx.links.number(c["persons_gt"], run, 0),
                ctx.links.number(c["persons_anonymized"], run, 0), ctx.links.number(left, run, 0),
                f"{c['persons_small']} / {c['persons_degenerate']} / {c['persons_empty']} / {c['crowd_regions']}",
                ctx.links.number(c.get("coverage"), run), ctx.links.number(c.get("coverage_min_image"), run),
            ])  # fmt: skip
            labels.append(f"{variant} {split}")
            reasons = [c["persons_small"], c["persons_degenerate"], c["persons_empty"]]
            stacks["anonymized"].append(c["persons_anonymized"])
            stacks["small"].append(reasons[0])
            stacks["degenerate"].append(reasons[1])
            stacks["empty segmentation"].append(reasons[2])
            stacks["other"].append(max(0, left - sum(reasons)))
    doc.paragraph(
        "Ground-truth persons (crowd regions count one each) and how many were anonymized; the rest were too small, "
        "had a degenerate or empty segmentation. Coverage: the share of ground-truth person pixels that changed "
        "(pixel-weighted over the split, and the worst image)."
    )
    doc.table(["method", "split", "images with person", "persons", "anonymized", "left", "small / degenerate / "
               "empty / crowd", "pixel coverage", "worst image"], rows, left=2)  # fmt: skip
    path = charts.stacked_bars(
        labels, stacks, "Persons anonymized and left out", "persons", ctx.figures / "coverage.png"
    )
    ctx.figure(doc, path, "Coverage: anonymized persons and the reasons others were left out.")
    answers = [
        f"{variant} {split}: {c['persons_gt'] - c['persons_anonymized']} of {c['persons_gt']} persons left, "
        f"pixel coverage {fmt(c.get('coverage'))}"
        for variant, splits in coverage.items()
        for split, c in splits.items()
    ]
    doc.paragraph("**Answer:** " + "; ".join(answers) + ".")
