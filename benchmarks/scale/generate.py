"""A COCO-2017-shaped dataset at scale factor s: COCO-format annotations and small real JPEG images.

At ``s = 1`` the splits have COCO 2017's published totals: train2017 118,287 images and 860,001
annotations, val2017 5,000 images and 36,781 annotations; the 80 categories with COCO's ids (1..90 with
gaps) and, in train, COCO 2017's per-class instance counts (:data:`TRAIN_INSTANCES`, which sum to the
published 860,001; val follows the same shares with its own person count); a person in 64,115 train
(2,693 val) images, 1,021 (48) images without any annotation. At any other s every total is the
rounded ``s x`` total, apportioned so that the per-class counts add up exactly.

What is modelled rather than copied (COCO publishes no such tables; the choices are stated here):

- persons per person image: 1 + a Poisson-Gamma (negative binomial) count with shape 0.6 and the
  published mean (262,465 / 64,115 = 4.09 persons per person image), so about a third of them show one
  person and a few show dozens, as COCO's crowded scenes do;
- other classes come in clusters of 2.2 instances on average (a class present in an image usually has
  several instances), spread uniformly over the non-empty images, every image without a person getting
  at least one;
- about 1 % of the annotations are crowd regions (``iscrowd=1`` with an uncompressed RLE, as COCO writes
  them), 70 % of them persons in images with at least four;
- box sizes in COCO's 640-pixel frame: sqrt(box area) log-normal with median 55 px and sigma 1.1, persons
  about 2.2 times as tall as wide; the polygons' areas (COCO's ``area``, about 0.57 of the box) then fall
  into COCO's 32²/96² buckets as 40 / 36 / 24 % small / medium / large (COCO reports 41 / 34 / 24);
  everything is then scaled to the image (``--image-width``, default 160: 160x120, 160x107 and 120x160
  images for COCO's 640x480, 640x427 and 480x640);
- polygons of 6 to 80 vertices (more for larger objects) around each box's inscribed ellipse, with two
  decimals as COCO writes them, so the annotation JSON has COCO's size (about 480 MB at s = 1; COCO's
  is 448 MB).

Images are real JPEGs (a gradient, noise, and every object drawn filled in its class colour), so every
stage decodes, checks and writes real files. Everything is deterministic from ``--seed``: the plan is
drawn once per split, the geometry per chunk of 1,000 images from (seed, split, chunk), independent of
the number of worker processes. A folder whose ``generated.json`` matches the request (scale, seed,
image width, :data:`VERSION`) is left as it is, so a rehearsal does not make its s = 1 data twice.

    python -m benchmarks.scale.generate --scale 0.01 [--out DIR] [--seed 0] [--image-width 160]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anonbench.coco_classes import COCO_CATEGORIES, PERSON

STAMP = "generated.json"
# Raise with any change to what the generator writes: older datasets are then made again.
VERSION = 2
CHUNK = 1000
DEFAULT_DATA = Path(os.environ.get("ANONBENCH_SCALE_DATA", "/var/tmp/anonbench-scale"))
# COCO 2017 train: instances per class in instances_train2017.json (crowd regions included).
TRAIN_INSTANCES: dict[str, int] = {
    "person": 262465, "bicycle": 7113, "car": 43867, "motorcycle": 8725, "airplane": 5135, "bus": 6069,
    "train": 4571, "truck": 9973, "boat": 10759, "traffic light": 12884, "fire hydrant": 1865,
    "stop sign": 1983, "parking meter": 1285, "bench": 9838, "bird": 10806, "cat": 4768, "dog": 5508,
    "horse": 6587, "sheep": 9509, "cow": 8147, "elephant": 5513, "bear": 1294, "zebra": 5303,
    "giraffe": 5131, "backpack": 8720, "umbrella": 11431, "handbag": 12354, "tie": 6496, "suitcase": 6192,
    "frisbee": 2682, "skis": 6646, "snowboard": 2685, "sports ball": 6347, "kite": 9076,
    "baseball bat": 3276, "baseball glove": 3747, "skateboard": 5543, "surfboard": 6126,
    "tennis racket": 4812, "bottle": 24342, "wine glass": 7913, "cup": 20650, "fork": 5479, "knife": 7770,
    "spoon": 6165, "bowl": 14358, "banana": 9458, "apple": 5851, "sandwich": 4373, "orange": 6399,
    "broccoli": 7308, "carrot": 7852, "hot dog": 2918, "pizza": 5821, "donut": 7179, "cake": 6353,
    "chair": 38491, "couch": 5779, "potted plant": 8652, "bed": 4192, "dining table": 15714,
    "toilet": 4157, "tv": 5805, "laptop": 4970, "mouse": 2262, "remote": 5703, "keyboard": 2855,
    "cell phone": 6434, "microwave": 1673, "oven": 3334, "toaster": 225, "sink": 5610,
    "refrigerator": 2637, "book": 24715, "clock": 6334, "vase": 6613, "scissors": 1481,
    "teddy bear": 4793, "hair drier": 198, "toothbrush": 1954,
}  # fmt: skip
# COCO's image sizes (most common three) in its own frame, with their shares.
FRAMES = ((640, 480, 0.55), (640, 427, 0.30), (480, 640, 0.15))
# Median side of a box in COCO's frame: its polygon (about 0.57 of the box) then has COCO's area buckets.
BOX_MEDIAN = 55.0
CLUSTER_MEAN = 2.2
PERSON_SHAPE = 0.6
CROWD_SHARE, CROWD_PERSON_SHARE = 0.01, 0.7


@dataclass(frozen=True)
class Totals:
    """A split's published COCO 2017 totals and the id ranges the generator uses for it."""

    images: int
    annotations: int
    images_with_person: int
    persons: int
    empty_images: int
    first_image_id: int
    first_ann_id: int


SPLITS: dict[str, Totals] = {
    "train2017": Totals(118287, 860001, 64115, 262465, 1021, 1, 1),
    "val2017": Totals(5000, 36781, 2693, 11004, 48, 900_000_001, 900_000_001),
}


def apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` that sum to ``total`` exactly (largest remainder)."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return counts


def split_totals(split: str, scale: float) -> dict[str, Any]:
    """The expected counts of one split at ``scale``: what the generator writes and its test checks.

    Returns:
        ``images``, ``annotations``, ``images_with_person``, ``persons``, ``empty_images`` and
        ``per_class`` (name -> instances, crowd regions included).
    """
    t = SPLITS[split]
    images = max(1, round(t.images * scale))
    annotations = round(t.annotations * scale)
    persons = round(t.persons * scale)
    names = [name for _, name in COCO_CATEGORIES if name != PERSON]
    others = apportion(annotations - persons, np.array([TRAIN_INSTANCES[n] for n in names], dtype=float))
    with_person = min(round(t.images_with_person * scale), persons, images)
    empty = min(round(t.empty_images * scale), images - with_person)
    return {
        "images": images,
        "annotations": annotations,
        "images_with_person": with_person,
        "persons": persons,
        "empty_images": empty,
        "per_class": {PERSON: persons, **{n: int(c) for n, c in zip(names, others, strict=True)}},
    }


@dataclass(frozen=True)
class Plan:
    """Which image holds which annotations: per image its size, per annotation its class and crowd flag."""

    frames: np.ndarray  # per image: index into FRAMES
    ann_image: np.ndarray  # per annotation: image index (sorted)
    ann_category: np.ndarray  # per annotation: COCO category id
    ann_crowd: np.ndarray  # per annotation: bool


def plan_split(split: str, scale: float, seed: int) -> Plan:
    """Draw the split's layout: image sizes, persons per image, class clusters, crowd regions."""
    totals = split_totals(split, scale)
    rng = np.random.default_rng([seed, list(SPLITS).index(split)])
    n_images = totals["images"]
    frames = rng.choice(len(FRAMES), size=n_images, p=[share for *_, share in FRAMES])
    order = rng.permutation(n_images)
    n_person, n_empty = totals["images_with_person"], totals["empty_images"]
    person_images = np.sort(order[:n_person])
    non_empty = np.sort(order[: n_images - n_empty])
    plain = np.sort(order[n_person : n_images - n_empty])  # no person, at least one other object

    images, categories = [], []
    if n_person:
        extra = totals["persons"] - n_person
        weights = rng.gamma(PERSON_SHAPE, 1.0, n_person)
        per_image = 1 + rng.multinomial(extra, weights / weights.sum())
        images.append(np.repeat(person_images, per_image))
        categories.append(np.full(totals["persons"], 1, dtype=np.int64))
    ids = dict((name, cid) for cid, name in COCO_CATEGORIES)
    cluster_class, cluster_size = [], []
    for name, count in totals["per_class"].items():
        if name == PERSON or count == 0:
            continue
        clusters = min(count, max(1, round(count / CLUSTER_MEAN)))
        weights = rng.gamma(1.0, 1.0, clusters)
        cluster_size.append(1 + rng.multinomial(count - clusters, weights / weights.sum()))
        cluster_class.append(np.full(clusters, ids[name], dtype=np.int64))
    if cluster_size:
        sizes, classes = np.concatenate(cluster_size), np.concatenate(cluster_class)
        shuffled = rng.permutation(len(sizes))
        sizes, classes = sizes[shuffled], classes[shuffled]
        owner = rng.choice(non_empty, size=len(sizes))
        owner[: min(len(plain), len(sizes))] = plain[: len(sizes)]
        images.append(np.repeat(owner, sizes))
        categories.append(np.repeat(classes, sizes))
    ann_image = np.concatenate(images) if images else np.zeros(0, dtype=np.int64)
    ann_category = np.concatenate(categories) if categories else np.zeros(0, dtype=np.int64)
    sort = np.lexsort((ann_category, ann_image))
    ann_image, ann_category = ann_image[sort], ann_category[sort]

    crowd = np.zeros(len(ann_image), dtype=bool)
    n_crowd = round(CROWD_SHARE * len(ann_image))
    persons_per_image = np.bincount(ann_image[ann_category == 1], minlength=n_images)
    crowded = np.flatnonzero((ann_category == 1) & (persons_per_image[ann_image] >= 4))
    first_of_image = crowded[np.unique(ann_image[crowded], return_index=True)[1]]
    n_person_crowd = min(round(CROWD_PERSON_SHARE * n_crowd), len(first_of_image))
    crowd[rng.choice(first_of_image, size=n_person_crowd, replace=False)] = True
    others = np.flatnonzero(ann_category != 1)
    crowd[rng.choice(others, size=min(n_crowd - n_person_crowd, len(others)), replace=False)] = True
    return Plan(frames, ann_image, ann_category, crowd)


def _colour(category: int) -> tuple[int, int, int]:
    """A fixed, distinct BGR colour per category."""
    rng = np.random.default_rng(category)
    return tuple(int(v) for v in rng.integers(30, 226, 3))  # type: ignore[return-value]


def _box(rng: np.random.Generator, person: bool, crowd: bool, frame_w: int, frame_h: int) -> tuple[float, ...]:
    """A COCO-like box ``x, y, w, h`` in COCO's own frame."""
    side = math.exp(rng.normal(math.log(150 if crowd else BOX_MEDIAN), 0.6 if crowd else 1.1))
    ratio = math.exp(rng.normal(math.log(2.2) if person else 0.0, 0.5 if person else 0.6))
    w = min(max(side / math.sqrt(ratio), 2.0), frame_w * 0.98)
    h = min(max(side * math.sqrt(ratio), 2.0), frame_h * 0.98)
    return float(rng.uniform(0, frame_w - w)), float(rng.uniform(0, frame_h - h)), w, h


def _polygon(rng: np.random.Generator, box: tuple[float, ...], area0: float, width: int, height: int) -> np.ndarray:
    """Vertices (n x 2) of a jittered ellipse inscribed in ``box``, inside the image."""
    x, y, w, h = box
    n = int(np.clip(round(6 + 0.33 * math.sqrt(area0)), 6, 80))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radius = rng.uniform(0.75, 1.0, n)
    xs = x + w / 2 + np.cos(angles) * radius * w / 2
    ys = y + h / 2 + np.sin(angles) * radius * h / 2
    return np.stack([np.clip(xs, 0, width), np.clip(ys, 0, height)], axis=1).round(2)


def _rle(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE of a bool mask: run lengths in column-major order, zeros first."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def _chunk(
    job: tuple[str, int, int, Path, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int],
) -> tuple[str, str]:
    """Write one chunk's images and return its images' and annotations' JSON (comma-joined records)."""
    split, seed, index, folder, image_width, frames, offsets, categories, crowds, first_ann = job
    rng = np.random.default_rng([seed, list(SPLITS).index(split), index])
    totals = SPLITS[split]
    factor = image_width / 640
    image_records, ann_records = [], []
    ann_id = first_ann
    for k, frame in enumerate(frames):
        image_id = totals.first_image_id + index * CHUNK + k
        frame_w, frame_h, _ = FRAMES[frame]
        width, height = round(frame_w * factor), round(frame_h * factor)
        name = f"{image_id:012d}.jpg"
        image_records.append(
            json.dumps(
                {
                    "license": 1 + image_id % 8,
                    "file_name": name,
                    "coco_url": f"http://images.cocodataset.org/{split}/{name}",
                    "height": height,
                    "width": width,
                    "date_captured": "2013-11-14 11:18:45",
                    "flickr_url": f"http://farm1.staticflickr.com/{image_id % 1000}/{image_id}_scale.jpg",
                    "id": image_id,
                },
                separators=(",", ":"),
            )
        )
        top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        ramp = np.linspace(0.0, 1.0, height)[:, None, None]
        canvas = (top * (1 - ramp) + bottom * ramp + rng.normal(0, 8, (height, width, 3))).clip(0, 255)
        canvas = canvas.astype(np.uint8)
        for j in range(offsets[k], offsets[k + 1]):
            category, crowd = int(categories[j]), bool(crowds[j])
            x0, y0, w0, h0 = _box(rng, category == 1, crowd, frame_w, frame_h)
            box = (x0 * factor, y0 * factor, max(w0 * factor, 1.0), max(h0 * factor, 1.0))
            box = (min(box[0], width - box[2]), min(box[1], height - box[3]), box[2], box[3])
            colour = _colour(category)
            ann: dict[str, Any]
            if crowd:
                mask = np.zeros((height, width), dtype=np.uint8)
                centre = (round(box[0] + box[2] / 2), round(box[1] + box[3] / 2))
                axes = (max(1, round(box[2] / 2)), max(1, round(box[3] / 2)))
                cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
                canvas[mask > 0] = colour
                area = float(mask.sum())
                segmentation: Any = {"counts": _rle(mask > 0), "size": [height, width]}
            else:
                points = _polygon(rng, box, w0 * h0, width, height)
                cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], colour)
                xs, ys = points[:, 0], points[:, 1]
                area = round(float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2), 4)
                segmentation = [points.ravel().tolist()]
            ann = {
                "segmentation": segmentation,
                "area": area,
                "iscrowd": int(crowd),
                "image_id": image_id,
                "bbox": [round(v, 2) for v in box],
                "category_id": category,
                "id": ann_id,
            }
            ann_id += 1
            ann_records.append(json.dumps(ann, separators=(",", ":")))
        ok, data = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode {name}")
        (folder / name).write_bytes(data.tobytes())
    return ",".join(image_records), ",".join(ann_records)


def write_split(root: Path, split: str, scale: float, seed: int, image_width: int, workers: int) -> dict[str, Any]:
    """Write one split's images and instances JSON under ``root``; return its counts."""
    plan = plan_split(split, scale, seed)
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    n_images = len(plan.frames)
    starts = np.searchsorted(plan.ann_image, np.arange(n_images + 1))
    totals = SPLITS[split]
    jobs = []
    for index, first in enumerate(range(0, n_images, CHUNK)):
        last = min(first + CHUNK, n_images)
        lo, hi = starts[first], starts[last]
        jobs.append(
            (
                split,
                seed,
                index,
                folder,
                image_width,
                plan.frames[first:last],
                starts[first : last + 1] - lo,
                plan.ann_category[lo:hi],
                plan.ann_crowd[lo:hi],
                totals.first_ann_id + int(lo),
            )
        )
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "description": f"anonbench synthetic COCO 2017 shape, scale {scale}, seed {seed}",
        "version": "1.0",
        "year": 2017,
        "contributor": "anonbench benchmarks/scale/generate.py",
        "date_created": "2017/09/01",
    }
    licenses = [
        {"url": "http://creativecommons.org/licenses/by/2.0/", "id": i, "name": "CC BY 2.0"} for i in range(1, 9)
    ]
    categories = [{"supercategory": "object", "id": cid, "name": name} for cid, name in COCO_CATEGORIES]
    ctx = mp.get_context("forkserver")
    tmp = path.with_suffix(".json.tmp")
    with ctx.Pool(max(1, workers)) as pool, tmp.open("w", encoding="utf-8") as out:
        out.write('{"info":' + json.dumps(info) + ',"licenses":' + json.dumps(licenses) + ',"images":[')
        annotations = []
        for i, (image_text, ann_text) in enumerate(pool.imap(_chunk, jobs)):
            out.write(("," if i else "") + image_text)
            annotations.append(ann_text)  # about 4 MB per chunk; written after the images, as COCO orders them
        out.write('],"annotations":[')
        out.write(",".join(text for text in annotations if text))
        out.write('],"categories":' + json.dumps(categories) + "}")
    os.replace(tmp, path)
    return {
        "images": n_images,
        "annotations": len(plan.ann_image),
        "crowd": int(plan.ann_crowd.sum()),
        "images_with_person": len(np.unique(plan.ann_image[plan.ann_category == 1])),
        "empty_images": n_images - len(np.unique(plan.ann_image)),
        "annotation_json_bytes": path.stat().st_size,
    }


def dataset_dir(data_dir: Path, scale: float, image_width: int = 160) -> Path:
    """Where the dataset at ``scale`` lives under a rehearsal's data folder."""
    suffix = "" if image_width == 160 else f"-w{image_width}"
    return data_dir / "datasets" / f"coco-s{scale:g}{suffix}"


def generate(root: Path, scale: float, seed: int = 0, image_width: int = 160, workers: int = 0) -> dict[str, Any]:
    """Make (or find complete) the dataset at ``scale`` in ``root``, COCO layout.

    Args:
        root: Dataset folder (``train2017/``, ``val2017/``, ``annotations/``).
        scale: s; 1 is COCO 2017's size.
        seed: Random seed of the whole dataset.
        image_width: Image width for COCO's 640-pixel-wide frames (160 gives 160x120 images).
        workers: Processes (0: every core).

    Returns:
        The stamp: request, per-split counts, seconds.
    """
    request = {"scale": scale, "seed": seed, "image_width": image_width, "generator_version": VERSION}
    stamp = root / STAMP
    if stamp.is_file():
        found = json.loads(stamp.read_text())
        if found.get("request") == request:
            return dict(found)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    start = time.perf_counter()
    counts = {
        split: write_split(root, split, scale, seed, image_width, workers or os.cpu_count() or 1) for split in SPLITS
    }
    result = {"request": request, "splits": counts, "seconds": round(time.perf_counter() - start, 1)}
    stamp.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", type=float, required=True, help="s: 1 is COCO 2017's size")
    parser.add_argument("--out", type=Path, help="dataset folder (default: <data dir>/datasets/coco-s<s>)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="env ANONBENCH_SCALE_DATA")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-width", type=int, default=160, help="width of COCO's 640-px frames")
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)
    root = args.out or dataset_dir(args.data_dir, args.scale, args.image_width)
    result = generate(root, args.scale, args.seed, args.image_width, args.workers)
    print(json.dumps({"dataset": str(root), **result}, indent=2))


if __name__ == "__main__":
    main()
