"""Q4: how much does anonymization alter images and objects (SSIM per use-case group and class)?"""

from __future__ import annotations

from typing import Any

from anonbench.report import charts
from anonbench.report.context import Context, fmt, ssim_mean
from anonbench.report.doc import Document


def q4_ssim(doc: Document, ctx: Context) -> None:
    """Q4: SSIM on the validation split per use-case group and class, box plots, and the classes' AP change."""
    doc.heading("Q4: How much does anonymization alter images and objects?")
    cfg, study = ctx.cfg, ctx.study
    split = cfg.data.val_split
    measured = {v: s["splits"][split]["with_person"] for v, s in study.ssim.items() if split in s["splits"]}
    if not measured:
        doc.missing(f"no SSIM summary of {split} (`data/ssim/<variant>/summary.json`); run `anonbench ssim "
                    "--variant <method>`.")  # fmt: skip
        return
    runs = {v: ctx.links.find("ssim", variant=v) for v in measured}
    groups = cfg.classes.use_case_groups
    doc.paragraph(
        f"On {split} (the paper's split), images with a person: mean SSIM of whole images that contain the group's "
        "classes next to the mean SSIM of the classes' boxes, and the box SSIM's luminance (l), contrast (c) and "
        "structure (s) factors. Use-case groups from params (DESIGN.md Table 1)."
    )
    rows = []
    for variant, scope in measured.items():
        entries = {"all boxes": {**scope, "classes": ["every class"]}, **scope["use_case_groups"]}
        for group, entry in entries.items():
            rows.append([
                variant, group, ", ".join(entry["classes"]),
                *(ctx.links.number(ssim_mean(entry, level, comp), runs[variant])
                  for level, comp in (("image", "ssim"), ("box", "ssim"), ("box", "luminance"),
                                      ("box", "contrast"), ("box", "structure"))),
                str(entry.get("box", {}).get("count", 0)),
            ])  # fmt: skip
    doc.table(
        ["method", "group", "classes", "image SSIM", "box SSIM", "box l", "box c", "box s", "boxes"], rows, left=3
    )
    series = {}
    for variant, scope in measured.items():
        entries = scope["use_case_groups"]
        series[f"{variant} image"] = [ssim_mean(entries[g], "image") for g in groups]
        series[f"{variant} box"] = [ssim_mean(entries[g], "box") for g in groups]
    path = charts.grouped_bars(list(groups), series, f"Mean SSIM per use-case group ({split})", "SSIM",
                               ctx.figures / "q4_ssim.png")  # fmt: skip
    ctx.figure(doc, path, f"Q4: whole-image vs box SSIM per use-case group and method ({split}, images with a person).")
    _q4_classes(doc, ctx, measured, runs)


def _q4_classes(doc: Document, ctx: Context, measured: dict[str, Any], runs: dict[str, str | None]) -> None:
    """The Table 1 classes one by one: box SSIM and the AP change beside it; per-box SSIM box plots."""
    cfg, study = ctx.cfg, ctx.study
    name = cfg.report.per_class_combination
    size, base = ctx.org_on_org()
    classes = [(group, c) for group, names in cfg.classes.use_case_groups.items() for c in names]
    afters = {v: ctx.combination(v, size, name) if size else None for v in measured}
    ctx.check_void(doc, "Q4 (Δ AP)", [base, *afters.values()], "the Δ AP columns")
    doc.paragraph(
        f"Per class of the use-case groups ({cfg.data.val_split}): mean box SSIM (boxes with defined SSIM) and the "
        f"class's AP change {name} − Org on Org (size {size}, points; params report.per_class_combination)."
    )
    rows = []
    for group, c in classes:
        row = [group, c]
        for variant, scope in measured.items():
            entry = scope["classes"].get(c)
            ssim = ctx.links.number(ssim_mean(entry, "box"), runs[variant]) if entry else "no boxes"
            row += [ssim, ctx.linked_delta(afters[variant], base, [c])]
        rows.append(row)
    header = ["group", "class"]
    for variant in measured:
        header += [f"{variant}\nbox SSIM", f"{variant}\nΔ AP"]
    doc.table(header, rows, left=2)
    labels = [c for _, c in classes]
    series = {
        v: [study.ssim_boxes[v].loc[study.ssim_boxes[v]["category"] == c, "ssim"].tolist() for c in labels]
        for v in measured
    }
    path = charts.grouped_boxes(labels, series, f"Per-box SSIM per class and method ({cfg.data.val_split})", "SSIM",
                                ctx.figures / "q4_ssim_boxes.png")  # fmt: skip
    ctx.figure(doc, path, f"Q4: the per-box SSIM of the Table 1 classes per method ({cfg.data.val_split}, images "
                          "with a person; a class without boxes has no box).")  # fmt: skip
    answers = []
    for variant, scope in measured.items():
        parts = [f"{g} {fmt(ssim_mean(e, 'box'))}" for g, e in scope["use_case_groups"].items()]
        answers.append(f"{variant}: box SSIM " + ", ".join(parts))
    doc.paragraph(f"**Answer ({cfg.data.val_split}):** " + "; ".join(answers) + ".")
