"""Q6 and Q7: is fine-tuning enough, and which part of the detector is most affected (freeze configs)?"""

from __future__ import annotations

from anonbench.config import Config, finetune_model_id
from anonbench.report import charts
from anonbench.report.context import Context, significance
from anonbench.report.doc import Document
from anonbench.report.drift import drift_section
from anonbench.study import EvalRecord


def q6_q7_freeze(doc: Document, ctx: Context) -> None:
    """Q6 and Q7: every freeze config on anonymized val against the Anon-only and the Org model; layer drift."""
    section = "Q6 and Q7"
    doc.heading("Q6 and Q7: Is fine-tuning enough, and which part of the detector is most affected?")
    cfg, study = ctx.cfg, ctx.study
    ft = cfg.finetune
    org_model = study.find(f"{ft.base.variant}-{ft.base.size}", ft.variant)
    anon_model = study.find(f"{ft.variant}-{ft.base.size}", ft.variant)
    tuned = {name: study.find(finetune_model_id(name), ft.variant) for name in ft.freeze}
    if org_model is None or not any(tuned.values()):
        doc.missing(
            f"fine-tuned models' evaluations on {ft.variant} (`metrics/eval/ft-<freeze>_on_{ft.variant}`) or the "
            "Org model's; run `anonbench finetune` and `anonbench evaluate` for them."
        )
    else:
        doc.paragraph(
            f"The Org model ({ft.base.variant}-{ft.base.size}) fine-tuned on a subset of {ft.variant} training "
            f"images (Figure 6), one model per freeze config, scored on the {ft.variant} validation images; the "
            f"paired differences from the Anon-only model ({ft.variant}-{ft.base.size}, Anon on Anon) and from the "
            f"Org model (Org on Anon), in points."
        )
        if not ctx.check_void(doc, section, [org_model, anon_model, *tuned.values()]):
            _freeze_table(doc, ctx, org_model, anon_model, tuned)
    drift_section(doc, ctx)


def _freeze_table(
    doc: Document,
    ctx: Context,
    org_model: EvalRecord,
    anon_model: EvalRecord | None,
    tuned: dict[str, EvalRecord | None],
) -> None:
    ft = ctx.cfg.finetune
    models = [("Org model (Org on Anon)", "—", org_model), ("Anon model (Anon on Anon)", "—", anon_model)]
    models += [(finetune_model_id(name), _frozen(ctx.cfg, name), record) for name, record in tuned.items()]
    rows = [
        [label, frozen, ctx.ap(record), ctx.ap(record, stat="AP50"),
         ctx.linked_delta(record, anon_model), ctx.linked_delta(record, org_model)]
        for label, frozen, record in models
    ]  # fmt: skip
    doc.table(["model", "frozen layers", "AP", "AP50", "Δ vs Anon model", "Δ vs Org model"], rows, left=2)
    boxes = [
        [100 * v for v in (r.per_class[c]["AP"] for c in r.per_class) if v is not None] if r and not r.void else []
        for _, _, r in models
    ]
    path = charts.grouped_boxes(
        [label.split(" (")[0] for label, _, _ in models], {f"per-class AP on {ft.variant} val": boxes},
        "Per-class AP by model and freeze config", "AP (%)", ctx.figures / "q6_q7_freeze.png",
    )  # fmt: skip
    ctx.figure(doc, path, f"Q6/Q7: per-class AP on {ft.variant} val, one box per model (classes with ground truth).")
    best = max(
        ((name, r) for name, r in tuned.items() if r is not None and r.ap() is not None),
        key=lambda item: item[1].ap() or 0.0,
        default=None,
    )
    if best is not None:
        gain = ctx.delta(best[1], anon_model)
        doc.paragraph(f"**Answer:** on {ft.variant}, the best fine-tune is {finetune_model_id(best[0])} "
                      f"({gain.text()} vs the Anon model, {significance(gain)}).")  # fmt: skip


def _frozen(cfg: Config, name: str) -> str:
    layers = cfg.finetune.frozen_layers(name)
    return f"{layers[0]}-{layers[-1]}" if layers else "none"
