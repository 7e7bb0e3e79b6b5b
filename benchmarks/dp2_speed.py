"""DeepPrivacy2's anonymize speed against the classic methods, on the same coco-mini images, in one run.

Runs in the DP2 environment (``make dp2-env``): each method goes through the stage's own per-image
function (decode, masks, anonymize, coverage, encode and write image, mask and record) over the
same images with persons. DP2 runs mode ``gt`` with untrained generators: no checkpoint can be had
here, and random weights cost the same as trained ones (same architecture, same crops). Its
one-off load is timed apart. Reported: images/s and persons/s, and DP2's time per image as a
multiple of each classic method's. With ``--device cuda`` (a lent GPU, AMP on) the result goes to
``dp2_speed_cuda.json``.

    .venv-dp2/bin/python benchmarks/dp2_speed.py [--coco-mini DIR] [--images 8] [--device cpu|cuda]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import REPO, arguments, machine, write_results

from anonbench.coco import annotations_by_image, person_category_id, read_instances
from anonbench.config import CLASSIC_METHODS, ORIGINAL, load_config
from anonbench.offline import go_offline
from anonbench.stages.anonymize import Context, _dp2, process_image

SPLIT = "val2017"


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--images", type=int, default=8, help="val images with a person (DP2 costs seconds a person)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    go_offline()
    cuda = args.device == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"paths.data={tmp}", "workers=1", "anonymize.dp2.mode=gt", "anonymize.dp2.untrained=true"]
        overrides += [f"anonymize.dp2.device={args.device}", f"anonymize.dp2.amp={str(cuda).lower()}"]
        cfg = load_config(REPO / "params.yaml", None, overrides)
        cfg.source_root.parent.mkdir(parents=True)
        cfg.source_root.symlink_to(args.coco_mini.resolve(), target_is_directory=True)
        instances = read_instances(cfg.annotation_file(ORIGINAL, SPLIT))
        person = person_category_id(instances["categories"])
        by_image = annotations_by_image(instances)
        with_person = [im for im in instances["images"] if any(a["category_id"] == person for a in by_image[im["id"]])]
        jobs = [(im, by_image[im["id"]]) for im in sorted(with_person, key=lambda im: im["file_name"])[: args.images]]

        start = time.perf_counter()
        _dp2(cfg.anonymize.dp2, "dp2_fullbody", cfg.seed)
        load_seconds = time.perf_counter() - start
        load_before = os.getloadavg()
        seconds: dict[str, float] = {}
        persons: dict[str, int] = {}
        for method in ("dp2_fullbody", *CLASSIC_METHODS):
            ctx = Context(cfg, method, SPLIT, person)
            start = time.perf_counter()
            records = [process_image(ctx, job) for job in jobs]
            if cuda:
                torch.cuda.synchronize()
            seconds[method] = time.perf_counter() - start
            persons[method] = sum(r["details"]["persons_anonymized"] for r in records)
        load_after = os.getloadavg()

    n = len(jobs)

    def rates(method: str) -> dict[str, Any]:
        return {
            "images_per_s": round(n / seconds[method], 3),
            "persons_anonymized": persons[method],
            "persons_per_s": round(persons[method] / seconds[method], 3),
        }

    result = {
        "benchmark": "dp2_speed_cuda" if cuda else "dp2_speed",
        "command": f".venv-dp2/bin/python benchmarks/dp2_speed.py --images {args.images} --device {args.device}",
        "data": f"coco-mini {SPLIT}: the first {n} images with a person (by file name), one process",
        "dp2": {
            **rates("dp2_fullbody"),
            "mode": "gt, untrained generator (same cost as trained)",
            "device": args.device,
            "amp": cuda,
            "load_seconds": round(load_seconds, 2),
        },
        "classic": {m: rates(m) for m in CLASSIC_METHODS},
        "dp2_seconds_per_image_over_classic": {
            m: round(seconds["dp2_fullbody"] / seconds[m], 1) for m in CLASSIC_METHODS
        },
        "machine": machine(
            torch=torch.__version__,
            torch_threads=torch.get_num_threads(),
            device_name=torch.cuda.get_device_name(0) if cuda else "cpu",
            loadavg_1min_before_after=[round(load_before[0], 2), round(load_after[0], 2)],
            note="one pass (DP2 takes seconds a person on a CPU); loadavg shows how busy the machine was",
        ),
    }
    write_results(Path("dp2_speed_cuda" if cuda else "dp2_speed").name, result)


if __name__ == "__main__":
    main()
