"""Layer drift: linear CKA per YOLOv10 layer of the Org model, original against anonymized images (Q7)."""

from __future__ import annotations

import math

from anonbench.analysis.cka import YOLOV10_PARTS, plot_cka
from anonbench.report.context import Context
from anonbench.report.doc import Document


def drift_section(doc: Document, ctx: Context) -> None:
    """Layer drift: linear CKA per layer of the Org model between original and anonymized images."""
    doc.heading("Layer drift (linear CKA)", 3)
    drift = ctx.study.drift
    if not drift:
        doc.missing("no layer drift (`metrics/drift/<variant>.json`); run `anonbench drift --variant <method>`.")
        return
    rows = []
    for variant, result in drift.items():
        scores = {layer["layer"]: layer["cka"] for layer in result["layers"]}
        lowest = min(scores, key=lambda i: (math.isnan(scores[i]), scores[i]))  # a constant layer's NaN is no drop
        means = [
            sum(scores[i] for i in range(first, last + 1)) / (last - first + 1) for _, first, last in YOLOV10_PARTS
        ]
        rows.append([variant, *(ctx.links.number(m, result["mlflow_run_id"]) for m in means),
                     ctx.links.text(f"{lowest} ({scores[lowest]:.3f})", result["mlflow_run_id"])])  # fmt: skip
    model = next(iter(drift.values()))["model_id"]
    doc.paragraph(
        f"CKA between {model}'s activations on original and anonymized versions of the same validation images "
        "(1: the layer sees them alike); means per part, and the layer that moves most."
    )
    doc.table(["method", *(f"{name} ({a}-{b})" for name, a, b in YOLOV10_PARTS), "lowest layer"], rows)
    curves = {v: [layer["cka"] for layer in r["layers"]] for v, r in drift.items()}
    path = plot_cka(curves, ctx.figures / "q7_drift.png", f"Layer drift of {model}")
    ctx.figure(doc, path, "Q7: linear CKA per YOLOv10 layer, original vs anonymized images.")
