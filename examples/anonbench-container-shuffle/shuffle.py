"""An anonbench container method: each person's pixels shuffled among themselves.

It keeps each person's colour histogram and destroys every shape and face (the privacy audit's
appearance attack still links it; docs/privacy.md). Speaks anonbench's container contract 1
(docs/plugins.md, "Container methods") with Python 3, NumPy and Pillow only, no anonbench:

    python3 shuffle.py JOB

reads JOB/request.json and JOB/masks/<id>.npz, writes JOB/output/<id>.png, <id>.region.png and,
last, JOB/output/manifest.json. ``params.passes`` (default 1) shuffles that many times. Each
person is shuffled with a generator seeded from the image's seed, largest person first; an image
that cannot be read is reported as an error, with the reason.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CONTRACT = 1


def shuffle(image: np.ndarray, masks: np.ndarray, seed: int, passes: int) -> tuple[np.ndarray, np.ndarray]:
    """The image with each person's pixels permuted, and the union of the masks (the painted region)."""
    out = image.copy()
    rng = np.random.default_rng(seed)
    for mask in masks:
        rows, cols = np.nonzero(mask)
        for _ in range(passes):
            order = rng.permutation(rows.size)
            out[rows, cols] = out[rows[order], cols[order]]
    return out, masks.any(axis=0)


def save_png(path: Path, pixels: np.ndarray) -> None:
    """Write a PNG through a temporary file in the same folder, so a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    Image.fromarray(pixels).save(temporary, format="PNG")
    os.replace(temporary, path)


def main(job: Path) -> None:
    """Do the job in folder ``job``: every requested image, then the manifest."""
    request = json.loads((job / "request.json").read_text(encoding="utf-8"))
    if request["contract"] != CONTRACT:
        sys.exit(f"shuffle: {job / 'request.json'}: contract {request['contract']}, this method speaks {CONTRACT}")
    passes = int(request["params"].get("passes", 1))
    output = job / "output"
    output.mkdir(exist_ok=True)
    entries = {}
    for entry in request["images"]:
        try:
            with Image.open(entry["path"]) as opened:
                image = np.asarray(opened.convert("RGB"))
        except OSError as exc:
            entries[str(entry["id"])] = {"status": "error", "reason": f"{entry['path']}: {exc}", "counts": {}}
            continue
        with np.load(job / entry["masks"]) as stored:
            masks = stored["masks"]
        out, region = shuffle(image, masks, entry["seed"], passes)
        save_png(output / f"{entry['id']}.png", out)
        save_png(output / f"{entry['id']}.region.png", region.astype(np.uint8) * 255)
        entries[str(entry["id"])] = {"status": "ok", "reason": "", "counts": {"persons_shuffled": len(masks)}}
    manifest = output / "manifest.json"  # last: it says the job is done
    temporary = manifest.with_name(".manifest.json.tmp")
    temporary.write_text(
        json.dumps({"contract": CONTRACT, "images": entries}, indent=1, sort_keys=True), encoding="utf-8"
    )
    os.replace(temporary, manifest)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: shuffle.py JOB")
    main(Path(sys.argv[1]))
