"""Q5: do object size and co-occurrence with 'person' matter (the size x frequency grid, the placement check)?"""

from __future__ import annotations

from anonbench.report import charts
from anonbench.report.context import (
    ANON_COMBINATIONS,
    FREQUENCIES,
    OBJECT_SIZES,
    STATS,
    Context,
    ap_of,
    methods_of,
    missing_models,
    note_absent,
    scaled,
)
from anonbench.report.doc import Document
from anonbench.study import EvalRecord


def q5_grid(doc: Document, ctx: Context) -> None:
    """Q5: absolute AP and its change per size x frequency cell, per class, for AP and AP50; the placement check."""
    section = "Q5"
    doc.heading("Q5: Do object size and co-occurrence with 'person' matter?")
    cfg = ctx.cfg
    size, base = ctx.org_on_org()
    if size is None or base is None:
        missing_models(doc, "the Org model's evaluation on original data")
        return
    grid = cfg.classes.size_frequency
    cells = [(f"{o} / {f}", grid[o][f]) for o in OBJECT_SIZES for f in FREQUENCIES]
    methods = methods_of(ctx.study)
    combos = {(m, n): ctx.combination(m, size, n) for m in methods for n in ANON_COMBINATIONS}
    doc.paragraph(
        f"Size {size}. Each cell of the grid (object size / co-occurrence with a person; params "
        f"classes.size_frequency, the paper's Table 5) holds four classes; a cell's AP is the mean over those with "
        f"ground truth. Differences are from Org on Org, in points."
    )
    void = ctx.check_void(doc, section, [base, *combos.values()])
    if not void:
        for stat in STATS:
            _q5_stat(doc, ctx, stat, cells, base, combos)
    _frequency_check(doc, ctx)


def _q5_stat(
    doc: Document,
    ctx: Context,
    stat: str,
    cells: list[tuple[str, list[str]]],
    base: EvalRecord,
    combos: dict[tuple[str, str], EvalRecord | None],
) -> None:
    """Q5 for AP or AP50: the heatmaps, the cell table with intervals and the per-class 3 x 12 grids."""
    cfg = ctx.cfg
    doc.heading(stat, 3)
    labels = [f"{m}: {n}" for m, n in combos]
    absolute = charts.Panel(
        ["Org on Org", *labels], [c for c, _ in cells],
        [[scaled(ap_of(r, classes, stat)) for _, classes in cells] for r in (base, *combos.values())],
    )  # fmt: skip
    change = charts.Panel(
        labels, [c for c, _ in cells],
        [[scaled(ctx.delta(r, base, classes, stat).value) for _, classes in cells] for r in combos.values()],
        diverging=True,
    )  # fmt: skip
    path = charts.heatmaps(
        {f"{stat} (%)": absolute, f"{stat} − Org on Org (points)": change},
        f"{stat} per size / frequency cell", ctx.figures / f"q5_grid_{stat.lower()}.png",
    )  # fmt: skip
    ctx.figure(doc, path, f"Q5: {stat} per size / frequency cell (left) and its change from Org on Org (right).")
    name = cfg.report.per_class_combination
    doc.paragraph(f"{name} − Org on Org per cell, {stat} points, with intervals:")
    doc.table(
        ["cell", "Org on Org", *(f"{m}\n{name} − Org on Org" for m, n in combos if n == name)],
        [[cell, ctx.ap(base, classes, stat), *(ctx.linked_delta(r, base, classes, stat)
                                                for (_, n), r in combos.items() if n == name)]
         for cell, classes in cells],
    )  # fmt: skip
    grid = cfg.classes.size_frequency
    for (m, n), record in combos.items():
        if n != name:
            continue
        doc.paragraph(f"**{m}**, per class: Org on Org → {name} {stat} (%), and the change in points:")
        header = ["size \\ frequency"]
        for f in FREQUENCIES:
            header += [f, *([""] * (max(len(grid[o][f]) for o in OBJECT_SIZES) - 1))]
        rows = []
        for o in OBJECT_SIZES:
            row: list[str] = [o]
            for f in FREQUENCIES:
                row += [_grid_cell(ctx, c, base, record, stat) for c in grid[o][f]]
            rows.append(row + [""] * (len(header) - len(row)))
        doc.table(header, rows, style="grid")


def _grid_cell(ctx: Context, name: str, base: EvalRecord, record: EvalRecord | None, stat: str) -> str:
    """One class of the 3 x 12 grid: its name, Org on Org → the combination, the change with its interval."""
    if base.ap([name], stat) is None and (record is None or record.ap([name], stat) is None):
        return f"{name}\nn/a"
    return f"{name}\n{ctx.ap(base, [name], stat)} → {ctx.ap(record, [name], stat)}\n" + ctx.linked_delta(
        record, base, [name], stat
    )


def _frequency_check(doc: Document, ctx: Context) -> None:
    """Whether each Table 5 class falls into the paper's frequency group on this data (prepare's counts)."""
    cfg, stats = ctx.cfg, ctx.study.class_stats
    split = cfg.data.train_split
    doc.heading("Frequency groups: the paper's placement against this data", 3)
    if stats is None:
        doc.missing(f"no class statistics (`data/prepared/{split}/class_stats.csv`); run `anonbench prepare`.")
        return
    borders = cfg.prepare.frequency_borders
    table5 = [(o, f, c) for o in OBJECT_SIZES for f in FREQUENCIES for c in cfg.classes.size_frequency[o][f]]
    placed = [(o, f, c) for o, f, c in table5 if c in stats.index]
    note_absent(doc, [c for _, _, c in table5 if c not in stats.index])
    disagree = [
        [c, o, f, str(stats.loc[c, "frequency_group"]), str(int(stats.loc[c, "images_with_person"]))]
        for o, f, c in placed
        if stats.loc[c, "frequency_group"] != f
    ]
    doc.paragraph(
        f"Computed from the images of {split} that hold the class and a person (prepare's class_stats.csv), with "
        f"the borders of params prepare.frequency_borders (high ≥ {borders.high}, medium ≥ {borders.medium}): "
        f"**{len(placed) - len(disagree)} of {len(placed)}** Table 5 classes fall into the paper's group."
    )
    if disagree and cfg.data.source == "coco-mini":
        doc.note(
            f"On coco-mini {len(disagree)} classes disagree, and that is expected: a few hundred images cannot "
            "reproduce the frequencies of the 118,000 COCO training images the paper counted (and the borders are "
            "scaled down). The paper's placement (params) is what the grid uses."
        )
    doc.table(["class", "object size", "paper's group", "group here", "images with a person"], disagree, left=4)
