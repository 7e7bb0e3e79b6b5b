"""Stale-label proposal rules and the review import, on hand-made boxes and masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anonbench.analysis.stale_labels import (
    Proposal,
    ReviewedBox,
    accept_all,
    apply_review,
    extension_proposals,
    labelstudio_tasks,
    parse_labelstudio,
    removal_proposals,
)


def person(ann_id: int, bbox: list[float], iscrowd: int = 0) -> dict:
    return {"id": ann_id, "image_id": 1, "category_id": 1, "bbox": bbox, "iscrowd": iscrowd, "area": 1.0}


def box_row(ann_id: int, category: str, inside: float, ssim: float) -> dict:
    return {"image_id": 1, "ann_id": ann_id, "category": category, "x": 1, "y": 2, "w": 3, "h": 4,
            "inside_anonymized": inside, "ssim": ssim}  # fmt: skip


def test_removal_needs_both_inside_and_low_ssim_and_lists_unassessed() -> None:
    rows = [box_row(1, "tie", 0.9, 0.1), box_row(2, "cup", 0.2, 0.1), box_row(3, "cup", 0.9, 0.7),
            box_row(4, "cup", 1.0, math.nan)]  # fmt: skip
    proposals, unassessed = removal_proposals(rows, inside_threshold=0.5, ssim_threshold=0.5)
    assert [p.ann_id for p in proposals] == [1] and unassessed == [4]
    (removal,) = proposals
    assert removal.action == "remove" and "SSIM fell to 0.100" in removal.reason
    assert removal.evidence["inside_anonymized"] == 0.9 and removal.evidence["old_bbox"] == [1, 2, 3, 4]


def test_person_box_grows_to_the_region_beyond_it() -> None:
    region = np.zeros((50, 60), dtype=bool)
    region[10:30, 10:20] = True  # the person's own box
    region[30:34, 12:16] = True  # generated feet reaching 4 px below
    (proposal,) = extension_proposals([person(7, [10, 10, 10, 20])], region, min_extend_px=1.0)
    assert proposal.action == "extend" and proposal.ann_id == 7
    assert proposal.evidence["new_bbox"] == [10, 10, 10, 24]
    assert proposal.evidence["growth_px"] == {"left": 0, "top": 0, "right": 0, "bottom": 4}
    assert proposal.evidence["region_pixels_beyond_box"] == 16


def test_shared_region_goes_to_the_nearest_box_and_stray_regions_extend_nothing() -> None:
    region = np.zeros((40, 80), dtype=bool)
    region[10:20, 5:45] = True  # one blob over two persons side by side, overflowing both outer sides
    region[30:35, 70:75] = True  # a region touching no person box
    persons = [person(1, [10, 10, 10, 10]), person(2, [30, 10, 10, 10])]
    proposals = {p.ann_id: p.evidence for p in extension_proposals(persons, region, min_extend_px=1.0)}
    assert proposals[1]["new_bbox"] == [5, 10, 20, 10]  # its left overflow plus its half of the gap
    assert proposals[2]["new_bbox"] == [25, 10, 20, 10]  # its half of the gap plus its right overflow
    assert proposals[1]["growth_px"]["right"] == 5 and proposals[2]["growth_px"]["left"] == 5


def test_small_growth_and_crowd_regions_make_no_proposal() -> None:
    region = np.zeros((30, 30), dtype=bool)
    region[5:20, 5:16] = True  # 0.6 px beyond a fractional box edge
    assert extension_proposals([person(1, [5, 5, 10.4, 15])], region, min_extend_px=1.0) == []
    region[5:25, 5:16] = True
    assert extension_proposals([person(1, [5, 5, 11, 15], iscrowd=1)], region, min_extend_px=1.0) == []


def instances() -> dict:
    anns = [
        person(1, [10, 10, 20, 40]),
        {"id": 2, "image_id": 1, "category_id": 32, "bbox": [15, 20, 5, 10], "iscrowd": 0, "area": 50.0},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [60, 60, 30, 20], "iscrowd": 0, "area": 600.0},
        {"id": 4, "image_id": 2, "category_id": 3, "bbox": [5, 5, 30, 20], "iscrowd": 0, "area": 600.0},
    ]
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 100},
                   {"id": 2, "file_name": "b.png", "width": 100, "height": 100}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 32, "name": "tie"}],
    }  # fmt: skip


PROPOSALS = [
    Proposal(1, 2, "tie", "remove", "inside", {"old_bbox": [15, 20, 5, 10], "new_bbox": None}),
    Proposal(1, 1, "person", "extend", "grown", {"old_bbox": [10, 10, 20, 40], "new_bbox": [8, 10, 22, 45]}),
]


def test_accepting_everything_applies_every_proposal_exactly() -> None:
    tasks = labelstudio_tasks(instances(), PROPOSALS, {1: "/a.png", 2: "/b.png"})
    assert len(tasks) == 1 and tasks[0]["data"]["image_id"] == 1
    corrected, summary = apply_review(instances(), PROPOSALS, parse_labelstudio(accept_all(tasks), "t")[0])
    boxes = {a["id"]: a["bbox"] for a in corrected["annotations"]}
    assert boxes == {1: [8, 10, 22, 45], 3: [60, 60, 30, 20], 4: [5, 5, 30, 20]}
    assert summary["counts"] == {"accepted": 2, "rejected": 0, "modified": 0}


def test_reviewer_edits_are_matched_by_box_when_ids_are_lost() -> None:
    reviewed = {
        1: [
            ReviewedBox("tie", (15.004, 20.0, 5.0, 10.0)),  # the removal rejected (kept, within rounding)
            ReviewedBox("person", (10.0, 10.0, 20.0, 40.0)),  # the extension rejected
            ReviewedBox("car", (1.0, 2.0, 3.0, 4.0)),  # a new box; car 3 deleted
        ]
    }
    corrected, summary = apply_review(instances(), PROPOSALS, reviewed)
    anns = {a["id"]: a for a in corrected["annotations"]}
    assert anns[2]["bbox"] == [15, 20, 5, 10] and anns[1]["bbox"] == [10, 10, 20, 40]
    assert summary["decisions"] == {"2:remove": "rejected", "1:extend": "rejected"}
    assert summary["removed_unproposed"] == [3] and summary["added"] == [5]
    assert anns[5]["bbox"] == [1.0, 2.0, 3.0, 4.0] and anns[5]["category_id"] == 3
    assert anns[4]["bbox"] == [5, 5, 30, 20]  # image 2 was not reviewed


def test_unknown_label_is_refused() -> None:
    with pytest.raises(ValueError, match="'zebra' is not a category"):
        apply_review(instances(), PROPOSALS, {1: [ReviewedBox("zebra", (1, 1, 2, 2))]})


def test_reviewed_image_without_annotations_keeps_the_added_boxes() -> None:
    truth = instances()
    truth["images"].append({"id": 3, "file_name": "c.png", "width": 100, "height": 100})
    corrected, summary = apply_review(truth, PROPOSALS, {3: [ReviewedBox("car", (1.0, 2.0, 3.0, 4.0))]})
    added = [a for a in corrected["annotations"] if a["image_id"] == 3]
    assert [a["bbox"] for a in added] == [[1.0, 2.0, 3.0, 4.0]] and summary["added"] == [added[0]["id"]]


def test_reviewed_image_not_in_the_ground_truth_is_refused() -> None:
    with pytest.raises(ValueError, match=r"reviewed image 9 .* not in the ground truth"):
        apply_review(instances(), PROPOSALS, {9: [ReviewedBox("car", (1, 1, 2, 2))]})


def test_region_within_the_dilated_ground_truth_extends_nothing() -> None:
    from anonbench.anonymizers.masks import dilate

    truth = np.zeros((60, 60), dtype=bool)
    truth[10:40, 20:30] = True  # the person, filling its box
    region = dilate(truth, 3)  # what blur, pixelate and mask anonymize: 3 px beyond the box on every side
    persons = [person(1, [20, 10, 10, 30])]
    assert extension_proposals(persons, region, min_extend_px=1.0)  # the old comparison: a 3 px "extension"
    assert extension_proposals(persons, region, min_extend_px=1.0, explained=dilate(truth, 3)) == []


def test_generated_content_beyond_the_dilation_extends_the_box_to_all_of_it() -> None:
    from anonbench.anonymizers.masks import dilate

    truth = np.zeros((60, 60), dtype=bool)
    truth[10:40, 20:30] = True
    region = dilate(truth, 3)
    region[40:50, 22:28] = True  # a generated person whose legs reach 10 px below the labelled box
    explained = dilate(truth, 3)
    (proposal,) = extension_proposals([person(1, [20, 10, 10, 30])], region, 1.0, explained=explained)
    assert proposal.evidence["growth_px"] == {"left": 0, "top": 0, "right": 0, "bottom": 10}
    assert proposal.evidence["new_bbox"] == [20, 10, 10, 40]
    # only the pixels the dilation does not explain count: rows 43..49 of the legs (7 x 6)
    assert proposal.evidence["region_pixels_beyond_box"] == 42
