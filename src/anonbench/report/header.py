"""The report's title and "how to read this": profile, data, models, protocol, anonymization, void sections."""

from __future__ import annotations

import json

from anonbench.report.context import NOT_RUN, Context, grid_text
from anonbench.report.doc import Document
from anonbench.study import Study

TITLE = "anonbench study report"


def header(doc: Document, ctx: Context) -> None:
    """Title and "how to read this": profile, data, models and criterion, protocol and head, DP2, void sections."""
    cfg, study = ctx.cfg, ctx.study
    doc.heading(TITLE, 1)
    counts = {}
    for split in cfg.data.splits:
        stats = cfg.paths.data / "prepared" / split / "stats.json"
        counts[split] = json.loads(stats.read_text(encoding="utf-8")) if stats.is_file() else {}
    images = ", ".join(
        f"{split} {c.get('images', '?')} images ({c.get('images_with_person', '?')} with a person)"
        for split, c in counts.items()
    )
    # What the trainings really ran (train.json), which may differ from the current params.
    ran = sorted({str(t["epochs"]) for t in study.trainings.values() if t.get("stage") == "train" and "epochs" in t})
    epochs = "/".join(ran) or str(cfg.train.epochs)
    if cfg.profile == "mini":
        doc.note(
            f"**Mini profile:** detection numbers come from {epochs} CPU epochs on "
            f"{counts.get(cfg.data.train_split, {}).get('images') or 128} training images. They exercise the "
            "pipeline end to end; they are **not findings**. SSIM, coverage and the relabel proposals are real "
            "measurements."
        )
    doc.heading("How to read this")
    rep = cfg.report
    n_val = next(iter({len(ids) for ids, _ in study.resamples.values()}), None)
    n_val = n_val or max((int(e.stats.get("images") or 0) for e in study.evaluations), default=0)
    rows = [
        ["profile", f"**{cfg.profile}** (params.yaml; seed {cfg.seed})"],
        ["data", f"`{cfg.data.source}`: {images}"],
        ["models", f"YOLOv10 {grid_text(cfg)} from scratch, {epochs} epochs at imgsz {cfg.train.imgsz} "
                   f"on `{cfg.train.device}`; fine-tunes of {cfg.finetune.base.variant}-{cfg.finetune.base.size} "
                   f"on {cfg.finetune.variant}; training criterion {_criterion(study)}"],
        ["protocol", _protocol(study)],
        ["anonymization", _anonymization(ctx)],
        ["names", "Org on Anon: the model trained on original images, evaluated on the method's anonymized "
                  "validation images; likewise Org on Org, Anon on Org, Anon on Anon (Anon: the method's images)"],
        ["units", "AP = COCO AP@[.50:.95], AP50 = AP@.50, both in percent with one decimal; SSIM 0-1"],
        ["differences", f"percentage points, value [low, high]: a {rep.confidence:.0%} percentile bootstrap interval "
                        f"from {rep.bootstrap_samples} resamples of the {n_val or '?'} validation images "
                        f"(seed {cfg.seed}), paired (both sides scored on the same resampled images)"],
        ["cells", f"void (reason): the evaluation gave no number and is left out of every difference; n/a: no "
                  f"ground truth for the class(es), or no interval; {NOT_RUN}: the evaluation does not exist"],
        ["links", f"every number links to the MLflow run that produced it (UI {rep.tracking_ui}; `make mlflow-ui` "
                  "serves the local store); a difference links to the run of its first term"],
        ["void", _void_summary(ctx)],
    ]  # fmt: skip
    doc.table(["", "this report"], rows, left=2)


def _protocol(study: Study) -> str:
    """The evaluation protocol, checkpoint and inference head as the metrics files record them."""
    if not study.evaluations:
        return "no evaluation yet"
    kinds: dict[str, int] = {}
    for e in study.evaluations:
        conf, max_det = e.stats.get("conf"), e.stats.get("max_det")
        protocol = e.stats.get("protocol")
        if protocol == "coco":
            text = f"COCO (every detection down to conf {conf}, at most {max_det} per image)"
        elif protocol == "authors":
            scorer = "their crowd rule" if e.stats.get("scorer") == "authors" else "the COCO API"
            text = f"the authors' (detections above conf {conf} only, scored with {scorer}: not the COCO protocol)"
        else:
            text = f"not recorded in the metrics files (conf {conf}, at most {max_det} per image)"
        checkpoint = e.stats.get("checkpoint")
        text += f", {checkpoint}.pt weights" if checkpoint else ", checkpoint not recorded"
        head, topk = e.stats.get("head"), e.stats.get("head_topk")
        if head == "one2one" and e.stats.get("nms") is False:
            text += f", YOLOv10's NMS-free one-to-one head (its top {topk})"
        else:
            text += f", head {head or 'not recorded'} (nms {e.stats.get('nms', 'not recorded')})"
        kinds[text] = kinds.get(text, 0) + 1
    if len(kinds) == 1:
        return next(iter(kinds))
    return "; ".join(f"{text}: {n} evaluations" for text, n in kinds.items())


def _criterion(study: Study) -> str:
    """The training criteria as the models' train.json record them, with how many models used each."""
    kinds: dict[str, int] = {}
    for training in study.trainings.values():
        text = str(training.get("criterion", {}).get("text", "not recorded"))
        kinds[text] = kinds.get(text, 0) + 1
    if not kinds:
        return "not recorded (no train.json yet)"
    return "; ".join(f"{text} ({n} model{'s' if n > 1 else ''})" for text, n in kinds.items())


def _anonymization(ctx: Context) -> str:
    """The methods, and for DeepPrivacy2 its mode and whether its weights were trained."""
    cfg = ctx.cfg
    parts = [f"methods {', '.join(cfg.anonymize.methods)}; classic methods on `{cfg.anonymize.mask_source}` masks"]
    dp2 = [m for m in cfg.anonymize.methods if m.startswith("dp2")]
    for method in dp2:
        splits = ctx.study.coverage.get(method, {})
        settings = next((c["dp2"] for c in splits.values() if "dp2" in c), None)
        if settings is None:
            parts.append(f"{method}: not run (no `data/variants/{method}/coverage_*.json` with DP2 settings)")
            continue
        weights = "**untrained** weights (not the paper's)" if settings.get("untrained") else "trained weights"
        below = sum(int(c.get("persons_below_size_filter", 0)) for c in splits.values())
        parts.append(
            f"{method}: DeepPrivacy2 in `{settings.get('mode')}` mode with {weights}, config "
            f"`{settings.get('config')}`, on `{settings.get('device')}` (AMP {settings.get('amp')}); "
            f"{below} persons below its size filter"
        )
    if not dp2:
        parts.append("no DeepPrivacy2 variant in this run")
    return "; ".join(parts)


def _void_summary(ctx: Context) -> str:
    void = [e for e in ctx.study.evaluations if e.void]
    full = [s for s, (n, total) in ctx.void_sections.items() if n == total]
    partly = [f"{s} ({n} of {total})" for s, (n, total) in ctx.void_sections.items() if n < total]
    parts = []
    if void:
        reasons = ", ".join(sorted({str(e.void_reason) for e in void}))
        parts.append(f"{len(void)} of {len(ctx.study.evaluations)} evaluations are void ({reasons})")
    if full:
        parts.append(f"every result is void in: {', '.join(full)}")
    if partly:
        parts.append(f"some are void in: {', '.join(partly)}")
    return "; ".join(parts) or "no evaluation is void"
