"""Bytes per image of an anonymized variant, PNG against JPEG, measured on coco-mini; sizing for full COCO.

Runs the anonymize stage (its own code, one process) on both coco-mini splits for blur and mask
in each output format, and re-encodes the originals unchanged as PNG (a variant where every
pixel is new, as DeepPrivacy2's full-body synthesis nearly is, cannot be smaller than that).
Counts the bytes each variant folder holds per image (images, masks, annotations, manifests,
coverage; not the resume records) against the original JPEGs, as a ratio, and scales them to
COCO 2017 (123,287 images; coco-mini's are real COCO 2017 images, so their mean stands in for
COCO's) for the workspace volume and the S3 bucket (infra/README.md).

    .venv/bin/python benchmarks/storage_size.py [--coco-mini DIR]
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from common import REPO, arguments, machine, write_results

from anonbench.config import ORIGINAL, load_config
from anonbench.images import encode_image, read_image
from anonbench.offline import go_offline
from anonbench.stages import anonymize

COCO2017_IMAGES = 118_287 + 5_000  # train2017 + val2017
PAPER_VARIANTS = 4  # dp2_fullbody, blur, pixelate, mask (params.yaml profiles.paper)
GB = 1e9


def folder_bytes(folder: Path, skip: tuple[str, ...] = ("records",)) -> int:
    """Bytes of the files under ``folder``, leaving out the resume records (not published, rebuilt on resume)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not set(p.parts) & set(skip))


def main() -> None:
    args = arguments(__doc__ or "").parse_args()
    go_offline()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = [f"paths.data={tmp}", "workers=1", f"tracking.uri=sqlite:///{tmp}/mlflow.db"]
        cfg = load_config(REPO / "params.yaml", None, base)
        cfg.source_root.parent.mkdir(parents=True)
        cfg.source_root.symlink_to(args.coco_mini.resolve(), target_is_directory=True)
        images = [p for split in cfg.data.splits for p in sorted(cfg.image_dir(ORIGINAL, split).iterdir())]
        original = sum(p.stat().st_size for p in images) / len(images)
        identity = sum(len(encode_image(read_image(p))) for p in images) / len(images)
        per_image = {"original_jpeg": original, "every_pixel_png": identity}
        for fmt in ("png", "jpeg"):
            for method in ("blur", "mask"):
                run = load_config(REPO / "params.yaml", None, [*base, f"anonymize.output_format={fmt}"])
                anonymize.run(run, method)
                per_image[f"{method}_{fmt}"] = folder_bytes(run.variant_root(method)) / len(images)
                run.variant_root(method).rename(Path(tmp) / f"{method}-{fmt}")
    per_variant = {fmt: max(per_image[f"{m}_{fmt}"] for m in ("blur", "mask")) for fmt in ("png", "jpeg")}
    per_variant["png"] = max(per_variant["png"], per_image["every_pixel_png"])  # DP2's bound
    coco = {fmt: per_variant[fmt] * COCO2017_IMAGES / GB for fmt in per_variant}
    raw = original * COCO2017_IMAGES / GB
    result = {
        "benchmark": "storage_size",
        "command": "python benchmarks/storage_size.py",
        "data": f"coco-mini, {len(images)} images (both splits)",
        "bytes_per_image": {k: round(v) for k, v in per_image.items()},
        "ratio_to_original": {k: round(v / original, 2) for k, v in per_image.items()},
        "coco2017_gb": {
            "raw": round(raw, 1),
            "variant_png": round(coco["png"], 1),
            "variant_jpeg": round(coco["jpeg"], 1),
            "workspace_paper_png": round(raw + PAPER_VARIANTS * coco["png"], 1),
            "workspace_paper_jpeg": round(raw + PAPER_VARIANTS * coco["jpeg"], 1),
            "s3_paper_png": round(PAPER_VARIANTS * coco["png"], 1),
        },
        "notes": (
            "A variant per image is the larger of blur and mask, and for PNG at least the original re-encoded "
            "as PNG (DeepPrivacy2's bound). COCO sizes are coco-mini's means times 123,287 images. The "
            "workspace adds YOLO exports (links and labels), models and metrics: a few GB. The DVC cache "
            "hardlinks published files (no second copy); the source is hashed, never pushed."
        ),
        "machine": machine(),
    }
    write_results("storage_size", result)


if __name__ == "__main__":
    main()
