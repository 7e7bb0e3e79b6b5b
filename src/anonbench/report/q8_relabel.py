"""Q8: do stale labels distort results (scores against the original and the corrected ground truth)?"""

from __future__ import annotations

from typing import Any

from anonbench.config import ORIGINAL
from anonbench.report import charts
from anonbench.report.context import Context, reference_size, scaled
from anonbench.report.doc import Document
from anonbench.study import Delta


def q8_relabel(doc: Document, ctx: Context) -> None:
    """Q8: Org on Anon and Anon on Anon scored against the original and the corrected ground truth."""
    doc.heading("Q8: Do stale labels distort results?")
    study = ctx.study
    size = reference_size(study)
    shown = {
        (variant, name): r
        for variant in ctx.cfg.anonymize.methods
        for name in ("Org on Anon", "Anon on Anon")
        for r in study.relabel
        if r["eval_data"] == variant and r["model_id"] == f"{ORIGINAL if name.startswith('Org') else variant}-{size}"
    }
    if not shown:
        doc.missing("no relabel evaluation (`metrics/relabel/*.json`); run `anonbench relabel --variant <method>`.")
        return
    doc.paragraph(
        f"Size {size}: the same stored predictions scored on the validation split against the original ground truth "
        "and against the corrected one (objects likely removed dropped, person boxes grown to the anonymized region; "
        "`data/relabel/<method>/`). Corrections: auto-accepted (every proposal taken) or reviewed by a person."
    )
    void = [str(r.get("void_reason") or "no reason given") for r in shown.values() if r.get("void")]
    ctx.count_void(doc, "Q8", void, len(shown), "this table")
    rows = []
    for (variant, name), result in shown.items():
        counts = study.proposals.get(variant, {})
        corrections = study.reviews.get(variant, {}).get("corrections", "not recorded")
        rows.append([
            f"{variant}: {name}", corrections, f"{counts.get('remove', '?')} / {counts.get('extend', '?')}",
            *_relabel_cells(ctx, result, "AP"), *_relabel_cells(ctx, result, "AP50")[2:],
        ])  # fmt: skip
    doc.table(["combination", "corrections", "proposals (remove / extend)", "AP, original GT", "AP, corrected GT",
               "Δ AP", "Δ AP50"], rows, left=2)  # fmt: skip
    if len(study.relabel) > len(shown):
        doc.paragraph(f"{len(study.relabel) - len(shown)} more models evaluated on anonymized data (fine-tunes, "
                      "other sizes and methods) are scored in `metrics/relabel/` and not shown here.")  # fmt: skip
    series, labels = {}, []
    for (variant, name), result in shown.items():
        if name != "Org on Anon" or result.get("void"):
            continue
        per_class = result["delta"]["per_class"]
        changed = {c: d["AP"] for c, d in per_class.items() if d["AP"]["value"]}
        top = sorted(changed, key=lambda c: (-abs(changed[c]["value"]), c))[:10]
        doc.paragraph(f"**{variant}: Org on Anon**, the classes whose AP moved most:")
        before, after = result["original"]["per_class"], result["corrected"]["per_class"]
        run, eval_run = result["mlflow_run_id"], result.get("eval_mlflow_run_id")
        doc.table(
            ["class", "AP, original GT", "AP, corrected GT", "Δ AP"],
            [[c, ctx.links.number(scaled(before[c]["AP"]), eval_run, 1),
              ctx.links.number(scaled(after[c]["AP"]), run, 1), ctx.links.text(_delta_of(changed[c]).text(), run)]
             for c in top] or [["(no class changed)", "", "", ""]],
        )  # fmt: skip
        labels += [c for c in top if c not in labels]
        series[f"{variant}: Org on Anon"] = per_class
    if labels:
        figure_series = {
            n: [scaled(p.get(c, {}).get("AP", {}).get("value")) for c in labels] for n, p in series.items()
        }
        path = charts.grouped_bars(labels, figure_series, "AP change per class: corrected minus original ground truth",
                                   "Δ AP (points)", ctx.figures / "q8_relabel.png")  # fmt: skip
        ctx.figure(doc, path, "Q8: per-class AP change from correcting stale labels (Org on Anon).")
    answers = [f"{v}: {n} {_delta_of(r['delta']['AP']).text()}" if not r.get("void") else f"{v}: {n} void"
               for (v, n), r in shown.items()]  # fmt: skip
    doc.paragraph("**Answer (AP with corrected minus original labels, points):** " + "; ".join(answers) + ".")


def _relabel_cells(ctx: Context, result: dict[str, Any], stat: str) -> list[str]:
    """AP against the original and the corrected ground truth and their difference; void with its reason."""
    if result.get("void"):
        text = ctx.links.text(f"void ({result.get('void_reason') or 'no reason given'})", result["mlflow_run_id"])
        return [text, text, "void"]
    return [
        ctx.links.number(scaled(result["original"][stat]), result.get("eval_mlflow_run_id"), 1),
        ctx.links.number(scaled(result["corrected"][stat]), result["mlflow_run_id"], 1),
        ctx.links.text(_delta_of(result["delta"][stat]).text(), result["mlflow_run_id"]),
    ]


def _delta_of(entry: dict[str, Any]) -> Delta:
    """A stored ``{"value", "ci"}`` difference as a :class:`Delta`."""
    ci = entry.get("ci") or [None, None]
    return Delta(entry.get("value"), ci[0], ci[1])
