"""The paper profiles' cost on a cluster of N GPU nodes, from the rehearsal's measurements and stated GPU figures.

The grid of each profile comes from params.yaml (its trained models, evaluation variants, methods and
fine-tunes): ``paper``, the paper's 13 trainings, and ``paper-all-sizes``, every method at every size (25).

CPU work is costed from ``benchmarks/results/scale.json``: CPU seconds measured by the rehearsal (the
robust number on a shared machine; wall seconds there are noisy), per real COCO image from the coco-mini
run, fixed start-up costs and growth from the synthetic scales. No GPU was lent to the rehearsal, so
every GPU figure is an assumption, kept in :data:`GPU` with its source so that a measured number
replaces it in one place:

- training: the YOLOv5 README's "training times for YOLOv5n/s/m/l/x are 1/2/4/6/8 days on a V100 GPU"
  (300 COCO epochs at 640 px; YOLOv5 n..x are 4.5 / 16.5 / 49.0 / 109.1 / 205.7 GFLOPs), interpolated
  log-log in FLOPs to YOLOv10 n..x (6.7 / 21.6 / 59.1 / 120.3 / 160.4 GFLOPs, the YOLOv10 paper's table),
  scaled to the paper's 100 epochs; an A100 taken as 2 V100s; DDP over the GPUs of one node at 85 %
  efficiency (Ultralytics has no multi-node training, so one training is one node);
- evaluation inference: 15 ms per validation image including pre- and post-processing at conf 0.001
  (the YOLOv10 paper gives 1.8-10.7 ms for the network alone, T4 TensorRT) and 20 s to load a model;
- DeepPrivacy2 full body: 0.1 s of detection per image and 0.4 s of generation per image with a person
  on one A100 (no published throughput: an assumption to replace with a measured one);
- layer drift (CKA over 64 images): 2 GPU-minutes per variant.

Feeding the GPUs (:func:`feeding`): a training's images/s on one GPU is the same assumption read the other
way (COCO's 118,287 training images x 300 epochs over the V100 time, on an A100); Ultralytics' loader
(mosaic at 640 px) makes ``images_per_core_second`` images per CPU second as
``benchmarks/loader_speed.py`` measured it on this machine. Loader workers per GPU = GPU images/s over
that, rounded up; CPUs per training = (workers + 1, the process that drives the GPU) per GPU. The
``train`` tasks of ``pipelines/cluster.yaml`` and the paper profile's ``train.workers`` are set for the
largest need of the grid (tests/data/test_scale_cost.py). The loader's CPU-hours are counted beside the
GPU-hours; they do not add wall time.

The privacy audit (issue 22) is costed from the face detector's seconds per image that the privacy notes
measured on coco-mini's 23 val images with a person (2 cores, one process; :data:`PRIVACY`): counted as
both cores busy (an upper bound), over every validation image, twice per variant (the originals and the
variant), on the CPUs of the ``privacy`` task kind of ``pipelines/cluster.yaml``.

The pipeline (pipelines/study.py) runs in phases joined by ``gather``: prepare; the anonymize fan-out with
its SSIM; export; train; fine-tune together with the evaluations of the trained models; the evaluations of
the fine-tunes; relabel next to drift; report. A fan-out runs at most ``parallelism`` tasks at once, GPU
tasks on at most one GPU node each. Wall time is the sum of the phases, each the longest-first schedule of
its tasks; a CPU task's per-image work spreads over its cores, its fixed part does not.

    python -m benchmarks.scale.cost [--profiles paper,paper-all-sizes] [--nodes 1,4,8] [--gpus-per-node 1]
        [--cpus-per-task 4] [--loader benchmarks/results/loader_speed.json]
        [--output benchmarks/results/scale_cost.json]

prints each profile's plan as Markdown and writes them all to ``--output`` (committed beside scale.json).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anonbench.config import CLASSIC_METHODS, ORIGINAL, Config, load_config
from benchmarks.common import REPO, RESULTS
from pipelines.settings import load_settings

PROFILES = ("paper", "paper-all-sizes")
# COCO 2017, the paper profiles' data.
TRAIN_IMAGES = 118_287
IMAGES = TRAIN_IMAGES + 5_000
VAL_IMAGES = 5_000
PERSON_IMAGES = 64_115 + 2_693
COCO_CLASSES = 80
COCO_GB = 19.3 + 0.47  # train2017 + val2017 JPEGs, instances JSON
PARAMS = {"n": 2_775_520, "s": 8_128_272, "m": 16_576_768, "l": 25_888_688, "x": 31_808_960}

# V100-days per 300 COCO epochs of YOLOv10 n..x, interpolated from the YOLOv5 README (see above).
V100_DAYS_PER_300_EPOCHS = {"n": 1.24, "s": 2.37, "m": 4.40, "l": 6.27, "x": 7.15}
GPU = {
    "a100_over_v100": 2.0,
    "ddp_efficiency": 0.85,
    "eval_seconds_per_image": 0.015,
    "eval_model_load_seconds": 20.0,
    "dp2_detect_seconds_per_image": 0.1,
    "dp2_generate_seconds_per_person_image": 0.4,
    "cka_seconds_per_variant": 120.0,
}
# The privacy audit's face detector, seconds per image on the 2-core machine the privacy notes measured it
# on (one process, coco-mini val; shared/notes/privacy-and-yolov10.md): dlib's CNN (MMOD) at upsample 1 is
# the thorough setting for a cluster, HOG at upsample 2 the fast one.
PRIVACY = {"cnn, upsample 1": 6.0, "hog, upsample 2": 0.42}
PRIVACY_DETECTOR = "cnn, upsample 1"  # costed in the stage table
PRIVACY_MEASURED_CORES = 2
PRIVACY_PASSES = 2  # the detector runs on the originals and on the variant, in each variant's task
LOADER_CASE = "paper (mosaic 1.0)"  # benchmarks/loader_speed.py's case with the paper's augmentation


@dataclass(frozen=True)
class Task:
    """One task of a fan-out: serial CPU seconds, CPU seconds spread over its cores, GPU seconds.

    ``beside_gpu`` CPU seconds run while the GPU works (a training's loader): CPU-hours, no wall time.
    ``cpus`` is the task's own core count where its kind asks for other than the CPU tasks' (privacy).
    """

    fixed_cpu: float = 0.0
    parallel_cpu: float = 0.0
    gpu: float = 0.0
    beside_gpu: float = 0.0
    cpus: int | None = None

    def wall(self, cpus: int) -> float:
        """Seconds on one node with ``cpus`` cores (unless the task has its own) for the parallel part."""
        return self.fixed_cpu + self.parallel_cpu / max(1, self.cpus or cpus) + self.gpu

    @property
    def cpu(self) -> float:
        """Every CPU second of the task."""
        return self.fixed_cpu + self.parallel_cpu + self.beside_gpu


@dataclass(frozen=True)
class Stage:
    """A fan-out of tasks and what it leaves on disk."""

    name: str
    tasks: tuple[Task, ...]
    gpu_task: bool
    storage_gb: float
    basis: str


def _point(doc: dict[str, Any], key: str) -> dict[str, Any]:
    name = key.split("/", 1)[0]
    for point in doc["measurements"].get(name, []):
        if point["key"] == key:
            return dict(point)
    raise KeyError(f"{key}: not in scale.json; run the rehearsal step that measures it")


def per_image(doc: dict[str, Any], stage: str) -> tuple[float, float, float]:
    """(fixed CPU s, CPU s per synthetic 160-px image, CPU s per image of COCO's size) of a per-image stage.

    The fixed part (start-up, worker pools, MLflow) is the intercept of CPU seconds against images over the
    two largest 160-px scales; the per-image part at COCO's size is the run on 640-px synthetic images
    (``-w640``) less that fixed part.
    """
    points = doc["measurements"][stage]
    small, large = sorted(
        (p for p in points if p["key"].split("/")[1][1:].replace(".", "").isdigit()), key=lambda p: p["images"]
    )[-2:]
    slope = (large["cpu_seconds"] - small["cpu_seconds"]) / (large["images"] - small["images"])
    fixed = max(0.0, small["cpu_seconds"] - slope * small["images"])
    name = "export_blur" if stage == "export_org" else stage
    full = [p for p in doc["measurements"].get(name, []) if p["key"].endswith("-w640")]
    per_full = (full[0]["cpu_seconds"] - fixed) / full[0]["images"] if full else slope
    return fixed, slope, max(slope, per_full)


def _output_gb(doc: dict[str, Any], stage: str) -> float:
    """A per-image stage's outputs at COCO's size: its bytes per image at the largest synthetic scale."""
    point = max((p for p in doc["measurements"][stage] if "output_bytes" in p), key=lambda p: p["images"], default=None)
    return 0.0 if point is None else point["output_bytes"] / point["images"] * IMAGES / 1e9


def gpu_train_images_per_s(size: str) -> float:
    """Training images per second of one A100 for YOLOv10-``size``: the assumed V100 times read the other way."""
    return TRAIN_IMAGES * 300 / (V100_DAYS_PER_300_EPOCHS[size] * 86400) * GPU["a100_over_v100"]


def feeding(loader: dict[str, Any], cfg: Config, gpus_per_node: int) -> dict[str, Any]:
    """Loader workers and CPUs per training so that the GPU does not wait, per model size of ``cfg``'s grid.

    Args:
        loader: ``benchmarks/results/loader_speed.json``.
        cfg: The profile (its trained sizes and the fine-tunes' base size).
        gpus_per_node: GPUs of one training (DDP: Ultralytics' ``workers`` is per GPU).

    Returns:
        The loader's images per core second, per size the GPU's images/s, workers per GPU and CPUs per
        training, and the largest workers and CPUs of the grid (what one ``train`` task kind must ask for).
    """
    per_core = float(loader["images_per_core_second"][LOADER_CASE])
    sizes = sorted({size for *_, size in cfg.train.models} | {cfg.finetune.base.size}, key=list(PARAMS).index)
    rows = {}
    for size in sizes:
        need = gpu_train_images_per_s(size)
        workers = math.ceil(need / per_core)
        rows[size] = {"gpu_images_per_s": need, "workers": workers, "cpus": gpus_per_node * (workers + 1)}
    return {
        "loader_images_per_core_second": per_core,
        "loader_cpu": loader["machine"].get("cpu_model", ""),
        "sizes": rows,
        "workers": max(r["workers"] for r in rows.values()),
        "cpus": max(r["cpus"] for r in rows.values()),
    }


def privacy_seconds(detector: str) -> float:
    """CPU seconds of one variant's privacy audit at paper scale with ``detector`` (:data:`PRIVACY`)."""
    return PRIVACY[detector] * PRIVACY_MEASURED_CORES * PRIVACY_PASSES * VAL_IMAGES


def stages(doc: dict[str, Any], cfg: Config, gpus_per_node: int, loader: dict[str, Any]) -> list[list[Stage]]:
    """The run of profile ``cfg`` as phases of stages (a phase waits for the one before)."""
    methods = cfg.anonymize.methods
    classic = [m for m in methods if m in CLASSIC_METHODS]
    generated = [m for m in methods if m not in CLASSIC_METHODS]  # DeepPrivacy2's
    exported = 1 + len(methods)  # org and every method
    models = cfg.train.models
    on = len(cfg.evaluate.variants)
    ft = cfg.finetune
    configs = len(ft.freeze)
    a100 = GPU["a100_over_v100"]
    ddp = gpus_per_node * GPU["ddp_efficiency"] if gpus_per_node > 1 else 1.0
    prepare = _point(doc, "prepare/s1")
    real = _point(doc, "anonymize/coco-mini")
    variant_gb = real["variant_bytes"] / real["images"] * IMAGES / 1e9
    fixed, _, cpu = per_image(doc, "anonymize")
    classic_task = Task(fixed, cpu * IMAGES)
    dp2 = IMAGES * GPU["dp2_detect_seconds_per_image"] + PERSON_IMAGES * GPU["dp2_generate_seconds_per_person_image"]
    s_fixed, _, s_cpu = per_image(doc, "ssim")
    e_fixed, _, e_cpu = per_image(doc, "export_org")
    r_fixed, r_syn, _ = per_image(doc, "relabel")
    boot = _point(doc, "bootstrap/s1")
    score = _point(doc, "score_faster_coco_eval/s1")
    if "predictions_bytes" not in score:
        raise KeyError("score_faster_coco_eval/s1 has no predictions_bytes; run the rehearsal's evaluate step again")
    predictions_gb = score["predictions_bytes"] / 1e9
    # The 25-model grid with every evaluation's resamples kept: their size does not depend on the images.
    report = _point(doc, "report/paper-bootstrap")
    evaluations = (len(models) + configs) * on
    epochs = cfg.train.epochs
    per_core = feeding(loader, cfg, gpus_per_node)["loader_images_per_core_second"]
    # (variant, family, size): YOLOv10's timings and parameter counts stand for every family's size
    train = [
        Task(
            gpu=V100_DAYS_PER_300_EPOCHS[size] * 86400 * epochs / 300 / a100 / ddp,
            beside_gpu=TRAIN_IMAGES * epochs / per_core,
        )
        for *_, size in models
    ]
    tuned = TRAIN_IMAGES * ft.epochs * ft.fraction
    tune = Task(
        gpu=V100_DAYS_PER_300_EPOCHS[ft.base.size] * 86400 * ft.epochs * ft.fraction / 300 / a100 / ddp,
        beside_gpu=tuned / per_core,
    )
    audited = [ORIGINAL, *methods]
    privacy_cpus = int(load_settings().resources("privacy").cpu or 1)
    infer = VAL_IMAGES * GPU["eval_seconds_per_image"] + GPU["eval_model_load_seconds"]
    # evaluate scores once and keeps its bootstrap resamples (AP and AP50 per resample and class, float64)
    evaluate = Task(fixed_cpu=score["cpu_seconds"] + boot["cpu_seconds"], gpu=infer)
    evaluation_gb = predictions_gb + 2 * boot["samples"] * COCO_CLASSES * 8 / 1e9
    weights_gb = 2 * 2 * sum(PARAMS[size] for *_, size in models) / 1e9  # best.pt and last.pt, half precision
    per_image_gb = {name: _output_gb(doc, name) for name in ("ssim", "export_org", "relabel")}
    pairs = len(models) + configs  # models evaluated on each anonymized variant: relabel scores each twice
    relabel = Task(r_fixed + 2 * pairs * boot["cpu_seconds"], r_syn * IMAGES)
    return [
        [
            Stage(
                "prepare",
                (Task(prepare["cpu_seconds"]),),
                False,
                0.1,
                f"measured at s = 1 ({prepare['peak_rss_mb']:.0f} MB)",
            )
        ],
        [
            Stage(
                f"anonymize, {len(classic)} classic",
                (classic_task,) * len(classic),
                False,
                len(classic) * variant_gb,
                f"{cpu * 1e3:.0f} CPU-ms per COCO image; {variant_gb:.0f} GB PNG per variant",
            ),
            Stage(
                f"anonymize, {', '.join(generated)}",
                (Task(gpu=dp2),) * len(generated),
                True,
                len(generated) * variant_gb,
                "assumed GPU throughput",
            ),
            Stage(
                f"ssim, {len(methods)} variants",
                (Task(s_fixed, s_cpu * IMAGES),) * len(methods),
                False,
                len(methods) * per_image_gb["ssim"],
                f"{s_cpu * 1e3:.0f} CPU-ms per COCO image",
            ),
            Stage(
                f"privacy, {len(audited)} variants",
                (Task(parallel_cpu=privacy_seconds(PRIVACY_DETECTOR), cpus=privacy_cpus),) * len(audited),
                False,
                0.0,
                f"face detector {PRIVACY_DETECTOR}: {PRIVACY[PRIVACY_DETECTOR]} s per image on "
                f"{PRIVACY_MEASURED_CORES} cores (privacy notes), {PRIVACY_PASSES} passes over val, "
                f"{privacy_cpus} CPUs",
            ),
        ],
        [
            Stage(
                f"export, {exported} variants",
                (Task(e_fixed, e_cpu * IMAGES),) * exported,
                False,
                exported * per_image_gb["export_org"],
                "links and label files",
            )
        ],
        [
            Stage(
                f"train, {len(models)} models",
                tuple(train),
                True,
                weights_gb,
                f"YOLOv5 README times scaled by FLOPs; loader {per_core:.0f} images per CPU-s (measured)",
            )
        ],
        [
            Stage(
                f"finetune, {configs} configs",
                (tune,) * configs,
                True,
                configs * 4 * PARAMS[ft.base.size] / 1e9,
                f"{ft.epochs} epochs on {ft.fraction:.0%} of train, size {ft.base.size}",
            ),
            Stage(
                f"evaluate, {len(models) * on} trained",
                (evaluate,) * (len(models) * on),
                True,
                len(models) * on * evaluation_gb,
                f"inference assumed; scoring ({score['cpu_seconds']:.0f} CPU-s) and resamples "
                f"({boot['cpu_seconds']:.0f} CPU-s) measured",
            ),
        ],
        [
            Stage(
                f"evaluate, {configs * on} fine-tuned",
                (evaluate,) * (configs * on),
                True,
                configs * on * evaluation_gb,
                "",
            )
        ],
        [
            Stage(
                f"relabel, {len(methods)} variants",
                (relabel,) * len(methods),
                False,
                len(methods) * per_image_gb["relabel"],
                f"2 bootstraps per model ({boot['cpu_seconds']:.0f} CPU-s each, measured)",
            ),
            Stage(
                f"drift, {len(methods)} variants",
                (Task(gpu=GPU["cka_seconds_per_variant"]),) * len(methods),
                True,
                0.0,
                "assumed",
            ),
        ],
        [
            Stage(
                "report",
                (Task(report["cpu_seconds"]),),
                False,
                0.01,
                f"{evaluations} evaluations' kept resamples read; measured with {report['evaluations']}",
            )
        ],
    ]


def makespan(seconds: list[float], slots: int) -> float:
    """Longest-first list scheduling of independent tasks on ``slots`` equal workers."""
    finish = [0.0] * max(1, slots)
    for task in sorted(seconds, reverse=True):
        heapq.heapreplace(finish, finish[0] + task)
    return max(finish)


def plan(
    doc: dict[str, Any],
    cfg: Config,
    nodes: int,
    gpus_per_node: int,
    parallelism: int,
    cpus: int,
    loader: dict[str, Any],
) -> dict[str, Any]:
    """Per stage: wall, CPU and GPU hours and storage; the phases' wall times and their sum; the totals."""
    rows: list[dict[str, Any]] = []
    phases = []
    for phase in stages(doc, cfg, gpus_per_node, loader):
        walls = []
        for stage in phase:
            slots = min(parallelism, nodes) if stage.gpu_task else parallelism
            wall = makespan([t.wall(cpus) for t in stage.tasks], slots)
            walls.append(wall)
            rows.append(
                {
                    "stage": stage.name,
                    "wall_h": wall / 3600,
                    "cpu_h": sum(t.cpu for t in stage.tasks) / 3600,
                    "gpu_h": sum(t.gpu for t in stage.tasks) * (gpus_per_node if stage.gpu_task else 0) / 3600,
                    "storage_gb": stage.storage_gb,
                    "basis": stage.basis,
                }
            )
        phases.append(max(walls))
    return {
        "nodes": nodes,
        "gpus_per_node": gpus_per_node,
        "parallelism": parallelism,
        "cpus_per_task": cpus,
        "wall_h": sum(phases) / 3600,
        "cpu_h": sum(r["cpu_h"] for r in rows),
        "gpu_h": sum(r["gpu_h"] for r in rows),
        "storage_gb": COCO_GB + sum(r["storage_gb"] for r in rows),
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    """A plan (:func:`plan`) as a Markdown table with its totals."""
    lines = [
        f"**{result['nodes']} GPU node(s) x {result['gpus_per_node']} A100, parallelism {result['parallelism']}, "
        f"{result['cpus_per_task']} CPUs per CPU task: about {result['wall_h']:.0f} h ({result['wall_h'] / 24:.1f} "
        f"days) end to end; {result['storage_gb']:.0f} GB of outputs (COCO included).**",
        "",
        "| stage | wall h | CPU-h | GPU-h | storage GB | basis |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['stage']} | {row['wall_h']:.1f} | {row['cpu_h']:.1f} | {row['gpu_h']:.1f} | "
            f"{row['storage_gb']:.1f} | {row['basis']} |"
        )
    lines.append(
        f"| **total** | **{result['wall_h']:.0f}** | **{result['cpu_h']:.0f}** | **{result['gpu_h']:.0f}** | "
        f"**{result['storage_gb']:.0f}** | |"
    )
    return "\n".join(lines)


def feeding_markdown(fed: dict[str, Any]) -> str:
    """What :func:`feeding` gives, as a Markdown table."""
    lines = [
        f"Loader: {fed['loader_images_per_core_second']:.0f} training images per CPU second (measured); "
        f"a train task asks for {fed['cpus']} CPUs and {fed['workers']} workers per GPU.",
        "",
        "| size | GPU images/s (A100, assumed) | loader workers per GPU | CPUs per training |",
        "|---|---:|---:|---:|",
    ]
    for size, row in fed["sizes"].items():
        lines.append(f"| {size} | {row['gpu_images_per_s']:.0f} | {row['workers']} | {row['cpus']} |")
    return "\n".join(lines)


def profile_plans(
    doc: dict[str, Any], cfg: Config, nodes: list[int], gpus_per_node: int, cpus: int, loader: dict[str, Any]
) -> dict[str, Any]:
    """One profile's grid, what its trainings need to be fed, the privacy audit per detector, its plan per node count.

    Parallelism is the node count, at least 4.
    """
    return {
        "trainings": len(cfg.train.models),
        "evaluations": (len(cfg.train.models) + len(cfg.finetune.freeze)) * len(cfg.evaluate.variants),
        "feeding": feeding(loader, cfg, gpus_per_node),
        "privacy_cpu_h_per_variant": {detector: privacy_seconds(detector) / 3600 for detector in PRIVACY},
        "plans": [plan(doc, cfg, n, gpus_per_node, max(4, n), cpus, loader) for n in nodes],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The paper profiles' cost on N GPU nodes (docs/scale.md).")
    parser.add_argument("--results", type=Path, default=RESULTS / "scale.json")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--profiles", default=",".join(PROFILES))
    parser.add_argument("--nodes", default="1,4,8")
    parser.add_argument("--gpus-per-node", type=int, default=1)
    parser.add_argument("--cpus-per-task", type=int, default=4)
    parser.add_argument("--loader", type=Path, default=RESULTS / "loader_speed.json")
    parser.add_argument("--output", type=Path, default=RESULTS / "scale_cost.json")
    args = parser.parse_args(argv)
    doc = json.loads(args.results.read_text())
    loader = json.loads(args.loader.read_text())
    nodes = [int(n) for n in args.nodes.split(",")]
    costs = {}
    try:
        for profile in args.profiles.split(","):
            costs[profile] = found = profile_plans(
                doc, load_config(args.params, profile), nodes, args.gpus_per_node, args.cpus_per_task, loader
            )
            print(f"## {profile}: {found['trainings']} trainings, {found['evaluations']} evaluations\n")
            print(feeding_markdown(found["feeding"]) + "\n")
            print("\n\n".join(markdown(p) for p in found["plans"]) + "\n")
    except KeyError as exc:
        parser.exit(1, f"{args.results}: {exc.args[0]}\n")
    args.output.write_text(json.dumps({"scale": args.results.name, "profiles": costs}, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
