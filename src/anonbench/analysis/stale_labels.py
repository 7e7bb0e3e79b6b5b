"""Stale-label proposals and their review round-trip (Label Studio, CVAT via COCO).

Anonymization can remove an object (a ball in a hand goes under the mask) or
generate a person larger than the original box; the original ground truth then
punishes correct detections. This module proposes a corrected ground truth from
evidence the earlier stages left (box SSIM and inside-region share from the
ssim tables, the anonymized-region masks), exports the proposals for review,
and turns a reviewed file back into COCO. Accepting every proposal is the same
import with the proposals standing in for the reviewer's answers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

from anonbench.coco import Annotation, CocoError, Instances

Action = Literal["remove", "extend"]
# Label Studio names: the labelling config's RectangleLabels and Image tags, and our model version.
LS_FROM, LS_TO, LS_PROPOSED, LS_ORIGINAL = "label", "image", "anonbench-relabel", "original"
# A reviewed box this close (px, every side) to an exported one is that box, unchanged.
SAME_BOX_PX = 0.01
# Boxes this module makes are rounded to a thousandth of a pixel, as predictions are.
BOX_DECIMALS = 3


@dataclass(frozen=True)
class Proposal:
    """One proposed correction of one ground-truth box, with why and on what evidence."""

    image_id: int
    ann_id: int
    category: str
    action: Action
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Stable id of the proposal."""
        return f"{self.ann_id}:{self.action}"


@dataclass(frozen=True)
class ReviewedBox:
    """One box as the reviewer left it; ``ann_id`` when it came from an exported box."""

    category: str
    bbox: tuple[float, float, float, float]
    ann_id: int | None = None


def region_id(ann_id: int) -> str:
    """Label Studio region id of an exported annotation (maps the reviewed box back)."""
    return f"a{ann_id}"


def _xyxy(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in bbox)
    return (x, y, x + w, y + h)


def _xywh(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [round(float(v), BOX_DECIMALS) for v in (x0, y0, x1 - x0, y1 - y0)]


def box_evidence(row: dict[str, Any]) -> dict[str, Any]:
    """What the ssim stage measured of a box: its share inside the anonymized region, SSIM and l / c / s."""
    measured = {
        k: float(row[k]) for k in ("inside_anonymized", "ssim", "luminance", "contrast", "structure") if k in row
    }
    return {k: None if math.isnan(v) else round(v, 4) for k, v in measured.items()}


def removal_proposals(
    boxes: Iterable[dict[str, Any]], inside_threshold: float, ssim_threshold: float
) -> tuple[list[Proposal], list[int]]:
    """Objects mostly inside the anonymized region whose box SSIM collapsed: likely removed.

    Args:
        boxes: Rows of the ssim boxes table (non-person, non-crowd objects only).
        inside_threshold: Minimum share of the box inside the anonymized region.
        ssim_threshold: SSIM below which the object counts as gone.

    Returns:
        The proposals, and the ann ids of boxes inside the region whose SSIM is undefined (too small
        to assess), so they are listed rather than silently passed over.
    """
    proposals, unassessed = [], []
    for row in boxes:
        inside, ssim = float(row["inside_anonymized"]), float(row["ssim"])
        if inside < inside_threshold:
            continue
        if math.isnan(ssim):
            unassessed.append(int(row["ann_id"]))
            continue
        if ssim >= ssim_threshold:
            continue
        evidence = {**box_evidence(row), "old_bbox": [round(float(row[k]), 2) for k in "xywh"], "new_bbox": None}
        reason = (
            f"{inside:.0%} of the box lies in the anonymized region and its SSIM fell to {ssim:.3f} "
            f"(< {ssim_threshold}): the object was likely removed with the person"
        )
        proposals.append(
            Proposal(int(row["image_id"]), int(row["ann_id"]), str(row["category"]), "remove", reason, evidence)
        )
    return proposals, unassessed


def extension_proposals(
    persons: Sequence[Annotation], region: np.ndarray, min_extend_px: float, explained: np.ndarray | None = None
) -> list[Proposal]:
    """Person boxes grown to cover the anonymized person where it reaches beyond the labelled one.

    Each connected part of the region belongs to the person boxes it touches; a pixel of a part that
    touches several goes to the nearest of them. A part touching no person box (a person the ground
    truth lacks) extends nothing. Only pixels outside ``explained`` can grow a box: a region that
    stays within it is the person as labelled, not a larger one.

    Args:
        persons: The image's person annotations (crowd regions take part in the assignment but are
            never extended: COCOeval ignores them).
        region: H x W bool, the anonymized person: the persons a generator painted (DP2's paint
            record), or a classic method's anonymized region.
        min_extend_px: Smallest growth (on any side) worth a proposal.
        explained: H x W bool, what the labelled persons account for: their undilated masks for a
            generator's persons, grown by the method's own dilation for a classic method's region;
            None counts every region pixel.

    Returns:
        One ``extend`` proposal per person box the unexplained content outgrows.
    """
    if not persons or not region.any():
        return []
    boxes = np.array([_xyxy(p["bbox"]) for p in persons])
    count, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
    reach: dict[int, list[float]] = {}
    beyond: dict[int, int] = {}
    for label in range(1, count):
        left, top, width, height = stats[label, :4]
        near = np.flatnonzero(
            (boxes[:, 0] <= left + width + 0.5) & (boxes[:, 2] >= left - 0.5)
            & (boxes[:, 1] <= top + height + 0.5) & (boxes[:, 3] >= top - 0.5)
        )  # fmt: skip
        if near.size == 0:
            continue
        ys, xs = np.nonzero(labels[top : top + height, left : left + width] == label)
        cx, cy = xs + left + 0.5, ys + top + 0.5
        # Distance of each pixel centre (columns) from each nearby box (rows), per axis; 0 inside.
        dx = np.maximum(np.maximum(boxes[near, 0, None] - cx, cx - boxes[near, 2, None]), 0.0)
        dy = np.maximum(np.maximum(boxes[near, 1, None] - cy, cy - boxes[near, 3, None]), 0.0)
        touching = np.maximum(dx, dy).min(axis=1) <= 0.5
        if not touching.any():
            continue
        near, dx, dy = near[touching], dx[touching], dy[touching]
        owner = np.argmin(np.hypot(dx, dy), axis=0)
        unexplained = np.ones(len(xs), dtype=bool) if explained is None else ~explained[ys + top, xs + left]
        for j, index in enumerate(near):
            mine = (owner == j) & unexplained
            if not mine.any():
                continue
            x0, y0 = cx[mine].min() - 0.5, cy[mine].min() - 0.5
            x1, y1 = cx[mine].max() + 0.5, cy[mine].max() + 0.5
            grown = reach.setdefault(int(index), list(boxes[index]))
            reach[int(index)] = [min(grown[0], x0), min(grown[1], y0), max(grown[2], x1), max(grown[3], y1)]
            beyond[int(index)] = beyond.get(int(index), 0) + int(((dx[j] > 0) | (dy[j] > 0))[mine].sum())
    proposals = []
    for index, new in sorted(reach.items()):
        person = persons[index]
        old = boxes[index]
        growth = {
            "left": old[0] - new[0],
            "top": old[1] - new[1],
            "right": new[2] - old[2],
            "bottom": new[3] - old[3],
        }
        if person.get("iscrowd") or max(growth.values()) < min_extend_px:
            continue
        evidence = {
            "old_bbox": [round(float(v), 2) for v in person["bbox"]],
            "new_bbox": _xywh(*new),
            "growth_px": {side: round(float(v), 2) for side, v in growth.items()},
            "region_pixels_beyond_box": beyond[index],
        }
        reason = (
            f"the anonymized region reaches up to {max(growth.values()):.1f} px beyond the person box "
            f"({beyond[index]} px outside it): the box is extended to cover the generated person"
        )
        proposals.append(Proposal(int(person["image_id"]), int(person["id"]), "person", "extend", reason, evidence))
    return proposals


def proposed_annotations(instances: Instances, proposals: Sequence[Proposal]) -> dict[int, list[Annotation]]:
    """Every image's annotations with all proposals applied (crowd regions dropped: not reviewed).

    Returns:
        Image id -> annotations, for the images that have a proposal.
    """
    by_ann = {p.ann_id: p for p in proposals}
    images = {p.image_id for p in proposals}
    proposed: dict[int, list[Annotation]] = {i: [] for i in sorted(images)}
    for ann in instances["annotations"]:
        if ann["image_id"] not in images or ann.get("iscrowd"):
            continue
        proposal = by_ann.get(ann["id"])
        if proposal is None:
            proposed[ann["image_id"]].append(ann)
        elif proposal.action == "extend":
            proposed[ann["image_id"]].append({**ann, "bbox": proposal.evidence["new_bbox"]})
    return proposed


def _category_names(instances: Instances) -> dict[int, str]:
    return {int(c["id"]): str(c["name"]) for c in instances["categories"]}


def _ls_region(ann: Annotation, name: str, width: int, height: int) -> dict[str, Any]:
    x, y, w, h = (float(v) for v in ann["bbox"])
    return {
        "id": region_id(int(ann["id"])),
        "type": "rectanglelabels",
        "from_name": LS_FROM,
        "to_name": LS_TO,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": 100.0 * x / width,
            "y": 100.0 * y / height,
            "width": 100.0 * w / width,
            "height": 100.0 * h / height,
            "rotation": 0,
            "rectanglelabels": [name],
        },
    }


def labelstudio_tasks(instances: Instances, proposals: Sequence[Proposal], image_url: dict[int, str]) -> list[dict]:
    """Label Studio import tasks: one per image with a proposal.

    Each task carries two predictions: the proposed ground truth (pre-selected for review) and the
    original one (to restore a box the proposal dropped); both use region ids ``a<ann id>``.

    Args:
        instances: The variant's ground truth.
        proposals: The split's proposals.
        image_url: Image id -> URL Label Studio loads the image from.

    Returns:
        The tasks, in image id order.
    """
    names = _category_names(instances)
    info = {im["id"]: im for im in instances["images"]}
    original: dict[int, list[Annotation]] = {}
    for ann in instances["annotations"]:
        if not ann.get("iscrowd"):
            original.setdefault(ann["image_id"], []).append(ann)
    by_image: dict[int, list[Proposal]] = {}
    for proposal in proposals:
        by_image.setdefault(proposal.image_id, []).append(proposal)
    tasks = []
    for image_id, anns in proposed_annotations(instances, proposals).items():
        width, height = int(info[image_id]["width"]), int(info[image_id]["height"])

        def regions(chosen: list[Annotation], width: int = width, height: int = height) -> list[dict[str, Any]]:
            return [_ls_region(a, names[a["category_id"]], width, height) for a in chosen]

        summary = "; ".join(f"{p.action} {p.category} {region_id(p.ann_id)}: {p.reason}" for p in by_image[image_id])
        tasks.append(
            {
                "data": {
                    "image": image_url[image_id],
                    "image_id": image_id,
                    "file_name": info[image_id]["file_name"],
                    "proposals": summary,
                },
                "predictions": [
                    {"model_version": LS_PROPOSED, "score": 1.0, "result": regions(anns)},
                    {"model_version": LS_ORIGINAL, "score": 0.0, "result": regions(original.get(image_id, []))},
                ],
            }
        )
    return tasks


def labelstudio_config(instances: Instances) -> str:
    """Label Studio labelling config matching the exported tasks (boxes over the dataset's classes)."""
    labels = "\n".join(f'    <Label value="{name}"/>' for name in _category_names(instances).values())
    return (
        "<View>\n"
        '  <Header value="$proposals"/>\n'
        f'  <Image name="{LS_TO}" value="$image"/>\n'
        f'  <RectangleLabels name="{LS_FROM}" toName="{LS_TO}">\n{labels}\n  </RectangleLabels>\n'
        "</View>\n"
    )


def cvat_coco(instances: Instances, proposals: Sequence[Proposal]) -> Instances:
    """COCO instances of the images with proposals, proposals applied: CVAT's "COCO 1.0" import."""
    proposed = proposed_annotations(instances, proposals)
    return {
        "info": {"description": "anonbench relabel proposals: review, then export as COCO 1.0"},
        "categories": instances["categories"],
        "images": [im for im in instances["images"] if im["id"] in proposed],
        "annotations": [a for anns in proposed.values() for a in anns],
    }


def accept_all(tasks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tasks as Label Studio would export them had a reviewer accepted every proposal."""
    accepted = []
    for task in tasks:
        proposed = next(p for p in task["predictions"] if p["model_version"] == LS_PROPOSED)
        accepted.append({**task, "annotations": [{"id": 1, "result": proposed["result"], "was_cancelled": False}]})
    return accepted


def _ls_box(region: dict[str, Any], where: str) -> ReviewedBox:
    try:
        value = region["value"]
        width, height = float(region["original_width"]), float(region["original_height"])
        (label,) = value["rectanglelabels"]
        x, y = value["x"] * width / 100.0, value["y"] * height / 100.0
        w, h = value["width"] * width / 100.0, value["height"] * height / 100.0
    except (KeyError, TypeError, ValueError) as exc:
        raise CocoError(f"{where}: not a Label Studio rectangle with one label ({exc!r})") from None
    rid = str(region.get("id", ""))
    ann_id = int(rid[1:]) if rid.startswith("a") and rid[1:].isdigit() else None
    return ReviewedBox(str(label), (x, y, w, h), ann_id)


def parse_labelstudio(export: list[dict[str, Any]], source: str) -> tuple[dict[int, list[ReviewedBox]], list[int]]:
    """Boxes per image from a Label Studio JSON export.

    A task's latest non-cancelled annotation is the review; a task nobody annotated is unreviewed.

    Args:
        export: The exported JSON (a list of tasks).
        source: File name for error messages.

    Returns:
        Reviewed boxes per image id, and the image ids of unreviewed tasks.
    """
    reviewed: dict[int, list[ReviewedBox]] = {}
    unreviewed = []
    for t, task in enumerate(export):
        try:
            image_id = int(task["data"]["image_id"])
        except (KeyError, TypeError, ValueError):
            raise CocoError(f"{source}: task {t} has no data.image_id (was it exported by anonbench?)") from None
        answers = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not answers:
            unreviewed.append(image_id)
            continue
        latest = max(enumerate(answers), key=lambda ia: (str(ia[1].get("updated_at", "")), ia[0]))[1]
        reviewed[image_id] = [
            _ls_box(r, f"{source}: task {t} (image {image_id}) region {r.get('id')}")
            for r in latest.get("result") or []
            if r.get("type") == "rectanglelabels"
        ]
    return reviewed, unreviewed


def parse_coco_review(data: Instances, instances: Instances, source: str) -> dict[int, list[ReviewedBox]]:
    """Boxes per image from a COCO file exported by CVAT (its own image and annotation ids, our file names).

    Args:
        data: The reviewed COCO mapping.
        instances: The variant's ground truth (maps file names to image ids).
        source: File name for error messages.
    """
    ids = {im["file_name"]: im["id"] for im in instances["images"]}
    names = _category_names(data)
    own: dict[int, int] = {}
    try:
        for image in data["images"]:
            if image["file_name"] not in ids:
                raise CocoError(f"{source}: image {image['file_name']!r} is not in the variant's ground truth")
            own[image["id"]] = ids[image["file_name"]]
        reviewed: dict[int, list[ReviewedBox]] = {own_id: [] for own_id in own.values()}
        for ann in data["annotations"]:
            if ann["image_id"] not in own or ann["category_id"] not in names:
                raise CocoError(f"{source}: annotation {ann.get('id')} names an unknown image or category")
            if not ann.get("iscrowd"):
                x, y, w, h = (float(v) for v in ann["bbox"])
                reviewed[own[ann["image_id"]]].append(ReviewedBox(names[ann["category_id"]], (x, y, w, h)))
    except (KeyError, TypeError, ValueError) as exc:  # a record without file_name, id, image_id or a 4-number bbox
        raise CocoError(f"{source}: not a COCO export this review can read ({exc!r})") from None
    return reviewed


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(abs(float(u) - float(v)) <= SAME_BOX_PX for u, v in zip(_xyxy(a), _xyxy(b), strict=True))


def apply_review(
    instances: Instances,
    proposals: Sequence[Proposal],
    reviewed: dict[int, list[ReviewedBox]],
    next_id: int | None = None,
) -> tuple[Instances, dict[str, Any]]:
    """The corrected ground truth: each reviewed image's boxes replaced by the reviewer's.

    A reviewed box is matched to a ground-truth annotation by its region id, else by class and an
    exported box it equals (the proposed or the original one); a matched annotation keeps its id,
    segmentation and area and only takes the reviewed box. Anything unmatched is a new annotation.
    Crowd regions and the images nobody reviewed stay as they were.

    Args:
        instances: The variant's ground truth.
        proposals: The proposals that were exported.
        reviewed: Reviewed boxes per image id.
        next_id: The first id for new annotations; by default one above the largest in ``instances``
            (pass the whole file's when ``instances`` holds only the reviewed images' annotations).

    Returns:
        The corrected instances and a summary: each proposal's decision and the other edits.

    Raises:
        CocoError: If a reviewed image is not in the ground truth or a reviewed label is not a category.
    """
    by_name = {name: cid for cid, name in _category_names(instances).items()}
    anns_of: dict[int, list[Annotation]] = {im["id"]: [] for im in instances["images"]}
    for ann in instances["annotations"]:
        anns_of.setdefault(ann["image_id"], []).append(ann)
    unknown = sorted(set(reviewed) - set(anns_of))
    if unknown:
        raise CocoError(f"reviewed image {unknown[0]} (and {len(unknown) - 1} more) is not in the ground truth")
    proposal_of = {p.ann_id: p for p in proposals}
    if next_id is None:
        next_id = max((a["id"] for a in instances["annotations"]), default=0) + 1
    kept: dict[int, list[float]] = {}
    added = []
    corrected = []
    for image_id, anns in sorted(anns_of.items()):
        if image_id not in reviewed:
            corrected += anns
            continue
        candidates = {a["id"]: a for a in anns if not a.get("iscrowd")}
        corrected += [a for a in anns if a.get("iscrowd")]
        for box in reviewed[image_id]:
            if box.category not in by_name:
                raise CocoError(f"reviewed image {image_id}: label {box.category!r} is not a category")
            match = _match(box, candidates, proposal_of, by_name)
            if match is None:
                ann = _new_annotation(next_id, image_id, by_name[box.category], box.bbox)
                next_id += 1
                added.append(ann["id"])
            else:
                source = candidates.pop(match)
                ann = {**source, "category_id": by_name[box.category], "bbox": _exact_box(box, source, proposal_of)}
                kept[match] = ann["bbox"]
            corrected.append(ann)
        # Unmatched leftovers were deleted by the reviewer.
    corrected.sort(key=lambda a: (a["image_id"], a["id"]))
    decisions = {p.key: _decision(p, kept) for p in proposals if p.image_id in reviewed}
    removed_unproposed = sorted(
        a["id"]
        for i in reviewed
        for a in anns_of.get(i, [])
        if not a.get("iscrowd") and a["id"] not in kept and a["id"] not in proposal_of
    )
    original_box = {a["id"]: a["bbox"] for a in instances["annotations"]}
    changed_unproposed = sorted(
        ann_id for ann_id, bbox in kept.items() if ann_id not in proposal_of and bbox != original_box[ann_id]
    )
    summary = {
        "reviewed_images": len(reviewed),
        "decisions": decisions,
        "counts": {d: sum(v == d for v in decisions.values()) for d in ("accepted", "rejected", "modified")},
        "added": added,
        "removed_unproposed": removed_unproposed,
        "changed_unproposed": changed_unproposed,
    }
    return {**instances, "annotations": corrected}, summary


def _match(
    box: ReviewedBox, candidates: dict[int, Annotation], proposal_of: dict[int, Proposal], by_name: dict[str, int]
) -> int | None:
    """The annotation a reviewed box stands for: its region id, else an equal exported box of its class."""
    if box.ann_id is not None and box.ann_id in candidates:
        return box.ann_id
    for ann_id, ann in candidates.items():
        if ann["category_id"] != by_name[box.category]:
            continue
        exported = [ann["bbox"]]
        if ann_id in proposal_of and proposal_of[ann_id].evidence.get("new_bbox"):
            exported.append(proposal_of[ann_id].evidence["new_bbox"])
        if any(_same(box.bbox, b) for b in exported):
            return ann_id
    return None


def _exact_box(box: ReviewedBox, source: Annotation, proposal_of: dict[int, Proposal]) -> list[float]:
    """The exported box itself when the reviewer left it as it was (no rounding drift), else theirs."""
    proposal = proposal_of.get(source["id"])
    for exported in (proposal.evidence.get("new_bbox") if proposal else None, source["bbox"]):
        if exported is not None and _same(box.bbox, exported):
            return list(exported)
    return [round(v, BOX_DECIMALS) for v in box.bbox]


def _new_annotation(ann_id: int, image_id: int, category_id: int, bbox: tuple[float, ...]) -> Annotation:
    x, y, w, h = (round(v, BOX_DECIMALS) for v in bbox)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x, y, w, h],
        "area": round(w * h, BOX_DECIMALS),
        "iscrowd": 0,
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
    }


def _decision(proposal: Proposal, kept: dict[int, list[float]]) -> str:
    """Whether the proposal was accepted, rejected or modified, from what became of its annotation."""
    final = kept.get(proposal.ann_id)
    if proposal.action == "remove":
        return "accepted" if final is None else "rejected"
    if final is not None and _same(final, proposal.evidence["new_bbox"]):
        return "accepted"
    if final is not None and _same(final, proposal.evidence["old_bbox"]):
        return "rejected"
    return "modified"


def proposal_dicts(proposals: Sequence[Proposal]) -> list[dict[str, Any]]:
    """Serializable proposals with their keys, in a stable order."""
    ordered = sorted(proposals, key=lambda p: (p.image_id, p.ann_id, p.action))
    return [{"key": p.key, **asdict(p)} for p in ordered]
