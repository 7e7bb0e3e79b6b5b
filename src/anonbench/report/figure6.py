"""The paper's Figure 6: images per Table 5 class with a person, training set beside the fine-tune subset."""

from __future__ import annotations

from anonbench.report import charts
from anonbench.report.context import Context, note_absent
from anonbench.report.doc import Document

# Figure 6's colours: the paper's blue (full training set) and green (fine-tune subset) bars.
FIGURE6_COLOURS = ("#1f77b4", "#2ca02c")


def figure6(doc: Document, ctx: Context) -> None:
    """The paper's Figure 6: images per Table 5 class with a person, full training set beside the fine-tune subset."""
    doc.heading("Figure 6: images per class with a person, training set and fine-tune subset")
    cfg, study = ctx.cfg, ctx.study
    if study.class_stats is None or study.subset is None or study.subset_counts is None:
        doc.missing(
            f"the class statistics (`data/prepared/{cfg.data.train_split}/class_stats.csv`, `anonbench prepare`) or "
            "the fine-tune subset (`data/finetune_subset/summary.json` and `class_counts.csv`, `anonbench finetune`)."
        )
        return
    counts, chosen = study.class_stats["images_with_person"], study.subset_counts["subset_images"]
    present = [c for c in cfg.classes.size_frequency_classes if c in counts.index]
    note_absent(doc, [c for c in cfg.classes.size_frequency_classes if c not in counts.index])
    classes = sorted(present, key=lambda c: (-counts[c], c))
    full = [float(counts[c]) for c in classes]
    subset = [float(chosen[c]) if c in chosen.index else None for c in classes]
    summary = study.subset
    borders = cfg.prepare.frequency_borders
    path = charts.grouped_bars(
        classes, {f"full {cfg.data.train_split}": full, "fine-tune subset": subset},
        "Images with a person holding the class", "images", ctx.figures / "figure6_cooccurrence.png",
        colors=FIGURE6_COLOURS, levels={"high": borders.high, "medium": borders.medium},
    )  # fmt: skip
    doc.paragraph(
        f"Per Table 5 class, the {cfg.data.train_split} images that hold it and a person (blue; prepare's "
        "class_stats.csv), beside the fine-tune subset's (green; data/finetune_subset/class_counts.csv). Eligible: "
        "training images with a person and a Table 5 class; the subset is a seeded random share of them whose "
        "per-class shares should follow the full set's. Dashed lines: the frequency group borders."
    )
    run = ctx.links.find("finetune")
    fraction = summary.get("fraction")
    counted = [ctx.links.number(summary.get(k), run, 0) for k in ("train_images", "eligible_images", "subset_images")]
    doc.table(
        ["training images", "eligible", "subset", "fraction", "largest share difference", "chi-square p"],
        [[*counted, f"{fraction} of {summary.get('fraction_of', '?')}" if fraction is not None else "not recorded",
          ctx.links.number(summary.get("max_abs_share_diff"), run), ctx.links.number(summary.get("chi2_p"), run)]],
        left=0,
    )  # fmt: skip
    ctx.figure(doc, path, "Figure 6: images per class co-occurring with a person, full training set (blue) and "
                          "fine-tune subset (green).")  # fmt: skip
