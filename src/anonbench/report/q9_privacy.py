"""Q9: how much identity is left? The privacy audit's rates beside chance, per method and size; privacy vs utility.

Reads ``metrics/privacy/<variant>.json`` of org (the identity control) and every anonymization
method (the privacy stage's contract, docs/report.md). A rate the audit could not measure (its
denominator is 0, or no inversion applies) is null there and shows as ``void``, never as 0.
The section also shows the paper's picture of what each method does (its Figures 2, 4 and 5)
on one validation image, the same for every method: :func:`example_image`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from anonbench.coco import Instances, image_path, person_category_id, read_instances
from anonbench.config import ORIGINAL
from anonbench.images import read_image
from anonbench.report import charts
from anonbench.report.context import Context, scaled, ssim_mean
from anonbench.report.doc import Document

VOID = "void"
# COCO's area buckets of the ground-truth person a face lies in; "outside": in no person.
BUCKETS = ("small", "medium", "large", "outside")
# The linkage attacks as the figure names them -> their key in the audit's "linkage".
LINKAGES = {"naive": "naive", "inverted": "inversion", "appearance": "appearance"}


def q9_privacy(doc: Document, ctx: Context) -> None:
    """Q9: faces detected and linked back per method beside chance, per person size; privacy against utility."""
    doc.heading("Q9: How much identity is left?")
    cfg = ctx.cfg
    variants = [ORIGINAL, *cfg.anonymize.methods]
    audits = {v: ctx.study.privacy[v] for v in variants if v in ctx.study.privacy}
    if missing := [v for v in variants if v not in audits]:
        doc.missing(f"no privacy audit of {', '.join(missing)} (`metrics/privacy/<variant>.json`); run "
                    "`anonbench privacy --variant <variant>` for each.")  # fmt: skip
    if audits:
        runs = {v: ctx.links.find("privacy", variant=v) for v in audits}
        _rates(doc, ctx, audits, runs)
        _privacy_utility(doc, ctx, audits)
    _pictures(doc, ctx)
    if audits:
        doc.paragraph("**Answer:** " + "; ".join(_answer(v, a) for v, a in audits.items()) + ".")


def _rates(doc: Document, ctx: Context, audits: dict[str, dict[str, Any]], runs: dict[str, str | None]) -> None:
    """The totals per variant, rates beside their chance level, and the same per size of the person."""
    first = next(iter(audits.values()))
    detector = first.get("detector", {})
    doc.paragraph(
        f"On {first.get('split')} ({first.get('images')} images, {first.get('images_with_faces')} with a face the "
        f"`{detector.get('model')}` face detector finds at upsample {detector.get('upsample')}): the faces found on "
        "the original images, and what an attacker gets back from each variant. Detected: the share of those faces "
        "still found on the variant's images. Naive linkage: the variant's face region at the original face's place "
        "matched against the embeddings of every original face; rank-1 identification rate beside chance, and the "
        "true-match rate at a 1 % false-match rate (calibrated on pairs of different original faces). Inverted: the "
        "same after undoing the method with knowledge of it (how: the inversion used; none for methods that cannot "
        "be undone). Appearance: each anonymized person matched to every original person by a colour descriptor, "
        "rank-1 beside chance. Residual: faces found on the variant outside every anonymized region. org is the "
        f"identity control (detected 1, naive rank-1 1). Rates 0-1; {VOID}: nothing to measure, never a 0."
    )
    rows = []
    for variant, audit in audits.items():
        run, linkage = runs[variant], audit["linkage"]
        naive, inverted, appearance = (linkage[key] for key in LINKAGES.values())
        residual = ctx.links.number(audit.get("residual_faces"), run, 0)
        if ids := audit.get("residual_image_ids"):
            residual += f" (image {', '.join(str(i) for i in ids)})"
        rows.append([
            variant, ctx.links.number(audit.get("faces"), run, 0), _rate(ctx, audit.get("detected_rate"), run),
            _rate(ctx, naive.get("rank1"), run), _rate(ctx, naive.get("chance"), run),
            _rate(ctx, naive.get("tmr_at_fmr_1pct"), run), str(inverted.get("how") or "none"),
            _rate(ctx, inverted.get("rank1"), run), _rate(ctx, inverted.get("tmr_at_fmr_1pct"), run),
            _rate(ctx, appearance.get("rank1"), run), _rate(ctx, appearance.get("chance"), run),
            ctx.links.number(appearance.get("persons"), run, 0), residual,
        ])  # fmt: skip
    doc.table(["method", "faces", "detected", "naive\nrank-1", "naive\nchance", "naive TMR\n@1% FMR", "inversion",
               "inverted\nrank-1", "inverted TMR\n@1% FMR", "appearance\nrank-1", "appearance\nchance", "persons",
               "residual faces"], rows)  # fmt: skip
    doc.paragraph("Per COCO size bucket of the ground-truth person a face lies in (outside: in no person):")
    sized = []
    for variant, audit in audits.items():
        run = runs[variant]
        for bucket in BUCKETS:
            entry = audit.get("by_size", {}).get(bucket, {})
            sized.append([
                variant, bucket, ctx.links.number(entry.get("faces"), run, 0),
                *(_rate(ctx, entry.get(key), run)
                  for key in ("detected_rate", "naive_rank1", "inversion_rank1", "appearance_rank1")),
                ctx.links.number(entry.get("appearance_persons"), run, 0),
            ])  # fmt: skip
    doc.table(["method", "person size", "faces", "detected", "naive\nrank-1", "inverted\nrank-1",
               "appearance\nrank-1", "persons"], sized, left=2)  # fmt: skip


def _rate(ctx: Context, value: float | None, run: str | None) -> str:
    """A rate linked to the audit's run; ``void`` where the audit had nothing to measure."""
    return VOID if value is None else ctx.links.number(value, run)


def _privacy_utility(doc: Document, ctx: Context, audits: dict[str, dict[str, Any]]) -> None:
    """Each method's linkage rates against what it costs: box SSIM of persons and ΔAP Org on Anon."""
    cfg, study = ctx.cfg, ctx.study
    methods = [m for m in cfg.anonymize.methods if m in audits]
    if not methods:
        return
    split = cfg.data.val_split
    size, base = ctx.org_on_org()
    ssim, delta = {}, {}
    for m in methods:
        person = study.ssim.get(m, {}).get("splits", {}).get(split, {}).get("with_person", {}).get("classes", {})
        ssim[m] = ssim_mean(person["person"], "box") if "person" in person else None
        org_on_anon = ctx.combination(m, size, "Org on Anon") if size else None
        delta[m] = scaled(ctx.delta(org_on_anon, base).value)
    panels = {
        f"box SSIM of persons ({split})": charts.Scatter("box SSIM of persons (1: unchanged)", {
            kind: [(m, ssim[m], audits[m]["linkage"][key].get("rank1")) for m in methods]
            for kind, key in LINKAGES.items()}),
        f"ΔAP Org on Anon − Org on Org (size {size})": charts.Scatter("Δ AP (points)", {
            kind: [(m, delta[m], audits[m]["linkage"][key].get("rank1")) for m in methods]
            for kind, key in LINKAGES.items()}),
    }  # fmt: skip
    levels = {}
    for key in ("naive", "appearance"):
        chances = {a["linkage"][key].get("chance") for a in audits.values()} - {None}
        if len(chances) == 1:
            levels[f"chance, {key}"] = float(chances.pop())
    path = charts.scatters(panels, "Privacy against utility", "linkage rank-1 (0-1)",
                           ctx.figures / "q9_privacy_utility.png", levels)  # fmt: skip
    ctx.figure(doc, path, "Q9: each method's linkage rank-1 (naive, inverted, appearance; lower is more private) "
                          "against its utility: box SSIM of persons (left) and ΔAP Org on Anon (right, points; a "
                          "void or missing evaluation or attack has no point). Dashed: chance.")  # fmt: skip


def example_image(instances: Instances, person_id: int, candidates: set[int]) -> int | None:
    """The validation image the method pictures show: the one whose largest person box is largest.

    The rule picks a large, plainly visible person, the same image for every method that has it;
    crowd regions do not count, ties go to the smaller image id.

    Args:
        instances: The original ground truth of the split.
        person_id: The category id of 'person'.
        candidates: Image ids that may be shown (those the variant has an image of).

    Returns:
        The image id, or None when no candidate has a person.
    """
    largest: dict[int, float] = {}
    for ann in instances["annotations"]:
        if ann["category_id"] == person_id and not ann.get("iscrowd") and ann["image_id"] in candidates:
            area = float(ann["bbox"][2]) * float(ann["bbox"][3])
            largest[ann["image_id"]] = max(area, largest.get(ann["image_id"], 0.0))
    return min(largest, key=lambda i: (-largest[i], i), default=None)


def _pictures(doc: Document, ctx: Context) -> None:
    """The paper's Figures 2, 4 and 5 per method: original, difference with the ground-truth boxes, anonymized."""
    cfg = ctx.cfg
    split = cfg.data.val_split
    doc.heading("What each method does to an image", 3)
    truth = cfg.annotation_file(ORIGINAL, split)
    if not truth.is_file():
        doc.missing(f"no original ground truth of {split} (`{truth.name}`); run `anonbench fetch`.")
        return
    original = read_instances(truth)
    person = person_category_id(original["categories"])
    files = {im["id"]: str(im["file_name"]) for im in original["images"]}
    doc.paragraph(
        f"As the paper's Figures 2, 4 and 5: one {split} image per method, the one whose largest (non-crowd) person "
        "box is largest (ties: the smaller image id), so every method shows the same image; the whole image, the "
        "absolute difference (mean over the colour channels) with the ground-truth person boxes, and the result."
    )
    missing = []
    for method in cfg.anonymize.methods:
        shown = _picture(ctx, method, original, person, files)
        if shown is None:
            missing.append(method)
            continue
        chosen, path = shown
        ctx.figure(doc, path, f"Q9: {method} on {split} image {chosen}: original, difference with the ground-truth "
                              "person boxes, anonymized.")  # fmt: skip
    if missing:
        doc.missing(f"no anonymized {split} image with a person of {', '.join(missing)} (`data/variants/<method>/"
                    f"{split}/`); run `anonbench anonymize --method <method>`.")  # fmt: skip


def _picture(
    ctx: Context, method: str, original: Instances, person: int, files: dict[int, str]
) -> tuple[int, Path] | None:
    """Draw one method's picture; the chosen image id and the figure, or None when it has no image to show."""
    cfg = ctx.cfg
    split = cfg.data.val_split
    annotations = cfg.annotation_file(method, split)
    if not annotations.is_file():
        return None
    anonymized = {im["id"]: image_path(cfg.image_dir(method, split), im["file_name"])
                  for im in read_instances(annotations)["images"]}  # fmt: skip
    chosen = example_image(original, person, {i for i, p in anonymized.items() if p.is_file() and i in files})
    if chosen is None:
        return None
    before = read_image(image_path(cfg.image_dir(ORIGINAL, split), files[chosen]))[..., ::-1]
    after = read_image(anonymized[chosen])[..., ::-1]
    if before.shape != after.shape:
        return None
    difference = np.abs(before.astype(np.int16) - after.astype(np.int16)).mean(axis=2)
    boxes = [a["bbox"] for a in original["annotations"] if a["image_id"] == chosen and a["category_id"] == person]
    panels = {"original": before, "difference, ground-truth person boxes": difference, f"anonymized ({method})": after}
    path = charts.image_row(panels, boxes, "difference, ground-truth person boxes", f"{method}: {split} image "
                            f"{chosen}", ctx.figures / f"q9_example_{method}.png")  # fmt: skip
    return chosen, path


def _plain(value: float | None) -> str:
    """A rate for running text, three decimals; ``void`` where there was nothing to measure."""
    return VOID if value is None else f"{value:.3f}"


def _answer(variant: str, audit: dict[str, Any]) -> str:
    """One variant's rates in words, void where the audit had nothing to measure."""
    linkage = audit["linkage"]
    return (
        f"{variant}: detected {_plain(audit.get('detected_rate'))} of {audit.get('faces')} faces, naive rank-1 "
        f"{_plain(linkage['naive'].get('rank1'))} (chance {_plain(linkage['naive'].get('chance'))}), inverted "
        f"{_plain(linkage['inversion'].get('rank1'))}, appearance {_plain(linkage['appearance'].get('rank1'))} (chance "
        f"{_plain(linkage['appearance'].get('chance'))}), {audit.get('residual_faces')} residual faces"
    )
