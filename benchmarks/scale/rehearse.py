"""Paper scale, rehearsed: the real stages on COCO-2017-shaped data at several scales, timed and weighed.

Every measurement runs one command in its own process tree (benchmarks/scale/measure.py): the
``anonbench`` CLI with the paper profile and ``--set`` overrides for the stages, ``python -m
benchmarks.scale.tasks`` for library entry points and their references, ``dvc`` for DVC. Steps:

- ``prepare``: ``anonbench prepare`` at every ``--scales`` s, next to pycocotools' ``COCO()`` loading
  the same two annotation files (its peak memory is the target's bar);
- ``images``: the per-image stages at every ``--image-scales`` s: ``anonymize --method blur``,
  ``ssim --variant blur``, ``export --variant org`` and ``blur``, ``relabel --variant blur``;
- ``evaluate``: at every ``--eval-scales`` s, synthetic detections (100 per image) on the val split,
  scored once with faster-coco-eval (the evaluate stage's scoring) and once with pycocotools (the
  reference), and the report's per-evaluation bootstrap with 1,000 resamples;
- ``report``: ``anonbench report`` over synthetic outputs of model grids up to the paper's (25 trained
  models x 5 evaluation variants + 6 fine-tunes x 5), and the paper grid once more with predictions
  on the smallest val split, so that every evaluation is bootstrapped;
- ``dvc``: at every ``--dvc-scales`` s, a DVC repository tracking a copy of the train images (118,287
  files at s = 1) as one directory output: commit with the default cache type (copy) and with
  hardlinks, ``dvc status``, a no-op ``dvc repro``, ``dvc push`` to a real S3 server (Ceph RADOS
  Gateway, tests/pipeline/s3/start_rgw.sh) and a second push with nothing to send.

Datasets and workspaces live under ``--data-dir`` (default /var/tmp/anonbench-scale, or
ANONBENCH_SCALE_DATA; never in git). A dataset is generated once and reused while it matches; every
finished measurement is kept in ``<data dir>/results.json``, so a rerun does only what is missing
(``--redo STEP`` measures a step again, ``--fresh`` everything). At the end the results go to
``benchmarks/results/scale.json`` and ``scale.png`` (``--results`` elsewhere).

    python -m benchmarks.scale.rehearse                     # the full rehearsal (about 2 hours on 2 cores)
    python -m benchmarks.scale.rehearse --scales 0.01 --image-scales 0.01 --eval-scales 0.01 --dvc-scales 0.01
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anonbench.config import load_config
from benchmarks.common import REPO, RESULTS, machine
from benchmarks.scale import generate
from benchmarks.scale.measure import run_measured

STEPS = ("prepare", "images", "real", "evaluate", "report", "dvc")
BIN = Path(sys.executable).parent
METHOD = "blur"
COCO_MINI = Path(os.environ.get("ANONBENCH_COCO_MINI") or REPO.parent / "shared" / "data" / "coco-mini")
PAPER_VARIANTS = ("org", "dp2_fullbody", "blur", "pixelate", "mask")
# Model grids for the report: sizes and training / evaluation variants (the paper's is the last).
REPORT_GRIDS = {
    "one-size": ("n", ("org", "blur", "pixelate", "mask")),
    "two-sizes": ("ns", PAPER_VARIANTS),
    "paper": ("nsmlx", PAPER_VARIANTS),  # the paper-all-sizes grid, 25 models (the key names its records)
}


def _code(src: Path | None) -> str:
    """Which anonbench the measurements ran: a given source tree, else this checkout's commit (+ local changes)."""
    if src is not None:
        return str(src)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=REPO, capture_output=True, text=True)
    return (head.stdout.strip() or "unknown") + (" + uncommitted changes in src/" if dirty.stdout.strip() else "")


def _scales(text: str) -> list[float]:
    return sorted({float(v) for v in text.split(",") if v.strip()})


class Rehearsal:
    """Measurements of one data folder, kept in ``results.json`` as they finish."""

    def __init__(
        self,
        data_dir: Path,
        redo: set[str],
        workers: int,
        suffix: str = "",
        only: set[str] | None = None,
        src: Path | None = None,
    ) -> None:
        """Open (or start) the folder's results.

        Args:
            data_dir: Datasets, workspaces, logs and ``results.json``.
            redo: Steps to measure again.
            workers: ``workers`` of every stage.
            suffix: Appended to every measurement's name (``_before_fix`` for an older version's numbers).
            only: Measurement names to record; the others still run (later ones need their outputs).
            src: A source tree of anonbench to measure instead of the installed one (put first on PYTHONPATH).
        """
        self.data_dir = data_dir
        self.redo = redo
        self.workers = workers
        self.suffix = suffix
        self.only = only
        self.store = data_dir / "results.json"
        self.records: dict[str, dict[str, Any]] = json.loads(self.store.read_text()) if self.store.is_file() else {}
        self.env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            "DVC_NO_ANALYTICS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONPATH": f"{src}:{REPO}" if src else str(REPO),
        }
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.code = _code(src)

    def _name(self, key: str) -> str:
        name, at = key.split("/", 1)
        return f"{name}{self.suffix}/{at}"

    def wanted(self, key: str) -> bool:
        """Whether the measurement ``key`` is recorded (``only``)."""
        return self.only is None or key.split("/", 1)[0] in self.only

    def done(self, key: str) -> bool:
        """Whether ``key`` was measured (and its step is not to be redone), or is not wanted at all."""
        if not self.wanted(key):
            return True
        found = self.records.get(self._name(key))
        return found is not None and found["step"] not in self.redo

    def get(self, key: str) -> dict[str, Any]:
        """A copy of the record of ``key`` (empty when it is not recorded)."""
        return dict(self.records.get(self._name(key), {}))

    def measure(self, key: str, step: str, command: list[str], cwd: Path, **info: Any) -> dict[str, Any]:
        """Run and measure ``command`` and keep the record under ``key`` (only run it when not wanted)."""
        if not self.wanted(key):
            self.run(command, cwd)
            return {}
        print(f"[rehearse] {key}: {' '.join(command)}", flush=True)
        log = self.data_dir / "logs" / f"{step}.log"
        record = {"step": step, **info, **run_measured(command, cwd, self.env, log), "code": self.code}
        record["command"] = command
        if "RESULT " in (text := log.read_text(errors="replace")):
            record["result"] = json.loads(text.rsplit("RESULT ", 1)[1].splitlines()[0])
        self.keep(key, record)
        print(f"[rehearse] {key}: {record['seconds']} s, peak {record['peak_rss_mb']} MB", flush=True)
        return record

    def keep(self, key: str, record: dict[str, Any]) -> None:
        """Store one record (results.json is rewritten whole, atomically); unwanted ones are dropped."""
        if self.wanted(key):
            self.records[self._name(key)] = record
            self._save()

    def _save(self) -> None:
        tmp = self.store.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.records, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.store)

    def run(self, command: list[str], cwd: Path) -> str:
        """Run an unmeasured helper command; its stdout, or a failure with its output."""
        proc = subprocess.run(command, cwd=cwd, env=self.env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
            )
        return proc.stdout

    def dataset(self, scale: float, image_width: int = 160) -> Path:
        """The generated dataset at ``scale`` (made now if missing or stale); its generation is recorded once."""
        root = generate.dataset_dir(self.data_dir, scale, image_width)
        stamp = root / generate.STAMP
        fresh = not stamp.is_file()
        found = generate.generate(root, scale, image_width=image_width, workers=self.workers)
        key = f"generate/{root.name.removeprefix('coco-')}"
        if fresh or key not in self.records:
            self.records[key] = {
                "step": "generate",
                "scale": scale,
                "seconds": found["seconds"],
                "splits": found["splits"],
            }
            self._save()
        return root

    def workspace(self, name: str, scale: float, wipe: bool) -> Path:
        """A stage workspace: ``data/raw/coco2017`` links to the dataset, MLflow's store is made beforehand."""
        work = self.data_dir / "work" / name
        if wipe and work.exists():
            shutil.rmtree(work)
        raw = work / "data" / "raw" / "coco2017"
        if not raw.exists():
            raw.parent.mkdir(parents=True, exist_ok=True)
            raw.symlink_to(self.dataset(scale), target_is_directory=True)
        if not (work / "mlflow.db").exists():  # its tables take seconds to make: not a stage's cost
            self.run(
                [
                    str(BIN / "python"),
                    "-c",
                    f"import mlflow; mlflow.MlflowClient('{self.uri(work)}').search_experiments()",
                ],
                work,
            )
        return work

    @staticmethod
    def uri(work: Path) -> str:
        """The workspace's MLflow store."""
        return f"sqlite:///{work / 'mlflow.db'}"

    def anonbench(self, work: Path, *args: str, extra: tuple[str, ...] = (), profile: str = "paper") -> list[str]:
        """An ``anonbench`` command with a paper profile (default ``paper``) and the workspace's paths."""
        overrides = [
            f"paths.data={work / 'data'}",
            f"paths.models={work / 'models'}",
            f"paths.metrics={work / 'metrics'}",
            f"paths.reports={work / 'reports'}",
            f"tracking.uri={self.uri(work)}",
            f"workers={self.workers}",
            *extra,
        ]
        sets = [item for value in overrides for item in ("--set", value)]
        return [str(BIN / "anonbench"), *args, "--params", str(REPO / "params.yaml"), "--profile", profile, *sets]

    def task(self, *args: str) -> list[str]:
        """A ``benchmarks.scale.tasks`` command."""
        return [str(BIN / "python"), "-m", "benchmarks.scale.tasks", *args]


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _counts(root: Path, split: str) -> dict[str, int]:
    """A generated split's counts, from its stamp."""
    return dict(_json(root / generate.STAMP)["splits"][split])


def step_prepare(r: Rehearsal, scales: list[float]) -> None:
    """prepare at each scale, and pycocotools loading the same files."""
    for scale in scales:
        key = f"prepare/s{scale:g}"
        if r.done(key) and r.done(f"pycocotools_load/s{scale:g}"):
            continue
        root = r.dataset(scale)
        work = r.workspace(f"prepare-s{scale:g}", scale, wipe=True)
        size = {s: _counts(root, s) for s in ("train2017", "val2017")}
        total = {k: sum(v[k] for v in size.values()) for k in ("images", "annotations")}
        record = r.measure(key, "prepare", r.anonbench(work, "prepare"), work, scale=scale, **total)
        stats = {s: _json(work / "data" / "prepared" / s / "stats.json") for s in size}
        record["outputs"] = {
            s: {k: stats[s][k] for k in ("images", "annotations", "images_with_person", "crowd", "manifest_counts")}
            for s in stats
        }
        files = [str(root / "annotations" / f"instances_{s}.json") for s in size]
        record["annotation_json_mb"] = round(sum(Path(f).stat().st_size for f in files) / 2**20, 1)
        r.keep(key, record)
        r.measure(f"pycocotools_load/s{scale:g}", "prepare", r.task("coco-load", *files), work, scale=scale, **total)
        shutil.rmtree(work)


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def step_images(r: Rehearsal, scales: list[float]) -> None:
    """The per-image stages on one classic method, in data order, at each scale."""
    for scale in scales:
        keys = [f"{stage}/s{scale:g}" for stage in ("anonymize", "ssim", "export_org", "export_blur", "relabel")]
        if all(r.done(k) for k in keys):
            continue
        root = r.dataset(scale)
        work = r.workspace(f"images-s{scale:g}", scale, wipe=True)
        size = {s: _counts(root, s) for s in ("train2017", "val2017")}
        info = {"scale": scale, **{k: sum(v[k] for v in size.values()) for k in ("images", "annotations")}}
        data = work / "data"
        variant = data / "variants" / METHOD
        rec = r.measure(keys[0], "images", r.anonbench(work, "anonymize", "--method", METHOD), work, **info)
        rec["outputs"] = {s: _json(variant / f"coverage_{s}.json")["status"] for s in size}
        r.keep(keys[0], rec)
        rec = r.measure(keys[1], "images", r.anonbench(work, "ssim", "--variant", METHOD), work, **info)
        tables = data / "ssim" / METHOD
        rec["outputs"] = {
            s: {"boxes": _rows(tables / f"{s}_boxes.parquet"), "images": _rows(tables / f"{s}_images.parquet")}
            for s in size
        }
        rec["output_bytes"] = _du(data / "ssim" / METHOD)
        r.keep(keys[1], rec)
        for key, name in ((keys[2], "org"), (keys[3], METHOD)):
            rec = r.measure(key, "images", r.anonbench(work, "export", "--variant", name), work, **info)
            rec["outputs"] = {s: _json(data / "yolo" / name / f"manifest_{s}.json")["counts"] for s in size}
            rec["output_bytes"] = _du(data / "yolo" / name)
            r.keep(key, rec)
        rec = r.measure(keys[4], "images", r.anonbench(work, "relabel", "--variant", METHOD), work, **info)
        rec["outputs"] = {s: _json(data / "relabel" / METHOD / f"proposals_{s}.json")["counts"] for s in size}
        rec["output_bytes"] = _du(data / "relabel" / METHOD)
        r.keep(keys[4], rec)
        rec = r.get(keys[0])
        rec["variant_files"] = sum(1 for p in variant.rglob("*") if p.is_file())
        rec["output_bytes"] = _du(variant)
        r.keep(keys[0], rec)
        shutil.rmtree(work)


def step_real(r: Rehearsal, coco_mini: Path, scale: float) -> None:
    """The per-image stages at COCO's image size: on real COCO images (coco-mini: bytes per image) and on
    the synthetic data at ``scale`` with 640-pixel-wide images (enough images for the CPU per image).
    """
    for label, root, dataset in (
        ("coco-mini", coco_mini.resolve(), "coco-mini (real COCO 2017 images)"),
        (f"s{scale:g}-w640", None, f"synthetic at s = {scale:g}, COCO's image sizes (640 px wide)"),
    ):
        keys = [f"{stage}/{label}" for stage in ("anonymize", "ssim", "export_blur")]
        if all(r.done(k) for k in keys):
            continue
        root = root or r.dataset(scale, image_width=640)
        work = r.data_dir / "work" / f"real-{label}"
        shutil.rmtree(work, ignore_errors=True)
        raw = work / "data" / "raw" / "coco2017"
        raw.parent.mkdir(parents=True)
        raw.symlink_to(root, target_is_directory=True)
        r.run(
            [str(BIN / "python"), "-c", f"import mlflow; mlflow.MlflowClient('{r.uri(work)}').search_experiments()"],
            work,
        )
        splits = ("train2017", "val2017")
        instances = {s: _json(root / "annotations" / f"instances_{s}.json") for s in splits}
        info = {
            "dataset": dataset,
            "images": sum(len(v["images"]) for v in instances.values()),
            "annotations": sum(len(v["annotations"]) for v in instances.values()),
            "source_bytes": sum(_du(root / s) for s in splits),
        }
        rec = r.measure(keys[0], "real", r.anonbench(work, "anonymize", "--method", METHOD), work, **info)
        rec["variant_image_bytes"] = sum(_du(work / "data" / "variants" / METHOD / s) for s in splits)
        rec["variant_bytes"] = _du(work / "data" / "variants" / METHOD)
        r.keep(keys[0], rec)
        r.measure(keys[1], "real", r.anonbench(work, "ssim", "--variant", METHOD), work, **info)
        r.measure(keys[2], "real", r.anonbench(work, "export", "--variant", METHOD), work, **info)
        shutil.rmtree(work)


def step_evaluate(r: Rehearsal, scales: list[float], samples: int) -> None:
    """Scoring and bootstrap of one evaluation on the val split at each scale."""
    for scale in scales:
        keys = [f"{name}/s{scale:g}" for name in ("score_faster_coco_eval", "score_pycocotools", "bootstrap")]
        if all(r.done(k) for k in keys):
            continue
        root = r.dataset(scale)
        work = r.workspace(f"evaluate-s{scale:g}", scale, wipe=True)
        truth = root / "annotations" / "instances_val2017.json"
        eval_dir = work / "eval"
        made = json.loads(r.run(r.task("predictions", str(truth), str(eval_dir)), work).split("RESULT ", 1)[1])
        val = _counts(root, "val2017")
        info = {
            "scale": scale,
            "images": val["images"],
            "annotations": val["annotations"],
            "detections": made["predictions"],
            "predictions_bytes": (eval_dir / "predictions.json").stat().st_size,
        }
        for key, backend in ((keys[0], "faster-coco-eval"), (keys[1], "pycocotools")):
            r.measure(key, "evaluate", r.task("score", str(truth), str(eval_dir), "--backend", backend), work, **info)
        command = r.task("bootstrap", str(truth), str(eval_dir), "--samples", str(samples))
        r.measure(keys[2], "evaluate", command, work, samples=samples, **info)
        shutil.rmtree(work)


def step_report(r: Rehearsal, scales: list[float], grids: list[str], bootstrap_grid: str, samples: int) -> None:
    """The report over model grids, and over one grid again with every evaluation bootstrapped.

    The bootstrapped run gives each evaluation synthetic predictions on the smallest val split.
    """
    smallest = min(scales)
    runs = [(name, *REPORT_GRIDS[name], False) for name in grids]
    runs += [(f"{bootstrap_grid}-bootstrap", *REPORT_GRIDS[bootstrap_grid], True)] if bootstrap_grid else []
    for name, sizes, variants, bootstrapped in runs:
        key = f"report/{name}"
        if r.done(key):
            continue
        work = r.workspace(f"report-{name}", smallest, wipe=True)
        base_size = "m" if "m" in sizes else sizes[0]
        grid = ["--variants", ",".join(variants), "--sizes", sizes, "--base-size", base_size]
        grid += ["--tracking-uri", r.uri(work)]
        info: dict[str, Any] = {"bootstrapped": bootstrapped, "samples": samples if bootstrapped else 0}
        if bootstrapped:
            truth = r.dataset(smallest) / "annotations" / "instances_val2017.json"
            info["images"] = _counts(truth.parents[1], "val2017")["images"]
            grid += ["--predictions-on", str(truth), "--images", str(info["images"])]
            # Each evaluation's resamples as the evaluate stage keeps them, drawn with the study's seed.
            grid += ["--resamples", str(samples), str(load_config(REPO / "params.yaml", "paper").seed)]
            for variant in variants[1:]:  # an anonymized variant's val annotations are the original's
                link = work / "data" / "variants" / variant / "annotations" / truth.name
                link.parent.mkdir(parents=True)
                link.symlink_to(truth)
        made = json.loads(r.run(r.task("report-grid", str(work), *grid), work).split("RESULT ", 1)[1])
        listed = lambda names: "[" + ",".join(names) + "]"  # noqa: E731
        extra = (
            f"anonymize.methods={listed(variants[1:])}",
            f"train.variants={listed(variants)}",
            f"evaluate.variants={listed(variants)}",
            f"train.sizes={listed(sizes)}",
            f"finetune.variant={variants[1]}",
            f"finetune.base.size={base_size}",
            f"report.bootstrap_samples={samples}",
        )
        # Every variant at every size of the grid: paper-all-sizes (the paper profile narrows the classic methods).
        command = r.anonbench(work, "report", extra=extra, profile="paper-all-sizes")
        rec = r.measure(key, "report", command, work, evaluations=made["evaluations"], **info)
        rec["outputs"] = {
            "html_bytes": (work / "reports" / "study.html").stat().st_size,
            "figures": len(list((work / "reports" / "figures").glob("*.png"))),
        }
        r.keep(key, rec)
        shutil.rmtree(work)


def _du(path: Path) -> int:
    """Bytes on disk under ``path`` (hard links counted once)."""
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def _start_s3(r: Rehearsal, data_bytes: int) -> tuple[Path, dict[str, str]]:
    """The tests' real S3 server (Ceph RADOS Gateway), its in-memory store sized for ``data_bytes``, and a bucket."""
    folder = r.data_dir / "rgw"
    shutil.rmtree(folder, ignore_errors=True)
    r.env["RGW_MEMSTORE_BYTES"] = str(max(2**30, 3 * data_bytes))
    r.run(["bash", str(REPO / "tests" / "pipeline" / "s3" / "start_rgw.sh"), str(folder)], REPO)
    creds = dict(line.split("=", 1) for line in (folder / "s3.env").read_text().splitlines() if "=" in line)
    import boto3

    boto3.client(
        "s3",
        endpoint_url=creds["AWS_ENDPOINT_URL"],
        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket="anonbench-scale")
    return folder, creds


def _dvc_repo(r: Rehearsal, repo: Path, cache_type: str | None) -> None:
    """An empty git + DVC repository, with ``cache.type`` set when given."""
    dvc = str(BIN / "dvc")
    repo.mkdir(parents=True)
    r.run(["git", "init", "-q"], repo)
    r.run([dvc, "init", "-q"], repo)
    r.run([dvc, "config", "core.analytics", "false"], repo)
    if cache_type:
        r.run([dvc, "config", "cache.type", cache_type], repo)


def step_dvc(r: Rehearsal, scales: list[float], s3: bool) -> None:
    """DVC with a directory of one file per train image: a stage output and ``dvc add``; a push to real S3."""
    dvc = str(BIN / "dvc")
    for scale in scales:
        names = ["commit_copy", "status", "status_again", "repro_noop", "repro_noop_again", "commit_hardlink", "add"]
        names += ["push_s3", "push_s3_again"] if s3 else []
        keys = {n: f"dvc_{n}/s{scale:g}" for n in names}
        if all(r.done(k) for k in keys.values()):
            continue
        images = r.dataset(scale) / "train2017"
        info: dict[str, Any] = {"scale": scale, "files": sum(1 for _ in images.iterdir()), "bytes": _du(images)}
        base = r.data_dir / "work" / f"dvc-s{scale:g}"
        shutil.rmtree(base, ignore_errors=True)
        # The variant as a stage's directory output, committed as `dvc repro` would after running the stage.
        for cache_type, setting in (("copy", None), ("hardlink", "hardlink,symlink")):
            repo = base / cache_type
            _dvc_repo(r, repo, setting)
            (repo / "source.txt").write_text("source\n")
            shutil.copytree(images, repo / "variant")
            r.run(
                [dvc, "stage", "add", "-n", "anonymize", "-d", "source.txt", "-o", "variant", "cp -r src variant"], repo
            )
            key = keys[f"commit_{cache_type}"]
            rec = r.measure(
                key, "dvc", [dvc, "commit", "-f", "anonymize"], repo, cache_type=setting or "default", **info
            )
            rec["cache_bytes"] = _du(repo / ".dvc" / "cache")
            rec["repository_bytes"] = _du(repo)
            r.keep(key, rec)
        repo = base / "copy"
        for name in ("status", "status_again", "repro_noop", "repro_noop_again"):
            command = [dvc, "status"] if name.startswith("status") else [dvc, "repro"]
            rec = r.measure(keys[name], "dvc", command, repo, **info)
            rec["up_to_date"] = json.loads(r.run([dvc, "status", "--json"], repo) or "{}") == {}
            r.keep(keys[name], rec)
        if s3:
            folder, creds = _start_s3(r, info["bytes"])
            try:
                r.run([dvc, "remote", "add", "s3", "s3://anonbench-scale/dvc"], repo)
                r.run([dvc, "remote", "modify", "s3", "endpointurl", creds["AWS_ENDPOINT_URL"]], repo)
                r.env.update({k: creds[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
                r.measure(keys["push_s3"], "dvc", [dvc, "push", "-r", "s3"], repo, **info)
                rec = r.get(keys["push_s3"])
                rec["objects_in_bucket"] = _count_objects(creds)
                r.keep(keys["push_s3"], rec)
                r.measure(keys["push_s3_again"], "dvc", [dvc, "push", "-r", "s3"], repo, **info)
            finally:
                r.run(["bash", str(REPO / "tests" / "pipeline" / "s3" / "stop_rgw.sh"), str(folder)], REPO)
        # The same folder tracked with `dvc add` (default cache type).
        shutil.rmtree(base / "hardlink")
        _dvc_repo(r, base / "add", None)
        shutil.move(str(repo / "variant"), base / "add" / "variant")
        shutil.rmtree(repo)
        r.measure(keys["add"], "dvc", [dvc, "add", "variant"], base / "add", **info)
        shutil.rmtree(base)


def _count_objects(creds: dict[str, str]) -> int:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=creds["AWS_ENDPOINT_URL"],
        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="anonbench-scale")
    return sum(page.get("KeyCount", 0) for page in pages)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=generate.DEFAULT_DATA, help="env ANONBENCH_SCALE_DATA")
    parser.add_argument("--scales", type=_scales, default=[0.01, 0.1, 1.0], help="for prepare")
    parser.add_argument("--image-scales", type=_scales, default=[0.01, 0.1], help="for the per-image stages")
    parser.add_argument("--eval-scales", type=_scales, default=[0.01, 0.1, 1.0], help="val split of these s")
    parser.add_argument("--dvc-scales", type=_scales, default=[0.1, 1.0], help="train images of these s")
    parser.add_argument("--coco-mini", type=Path, default=COCO_MINI, help="real COCO images for the `real` step")
    parser.add_argument("--fullsize-scale", type=float, default=0.01, help="s of the `real` step's 640-px data")
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap resamples (the paper profile's)")
    parser.add_argument("--report-grids", default=",".join(REPORT_GRIDS), help=f"of {','.join(REPORT_GRIDS)}")
    parser.add_argument("--bootstrap-grid", default="paper", help="grid reported with every evaluation bootstrapped")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"any of {','.join(STEPS)}")
    parser.add_argument("--redo", default="", help="steps to measure again")
    parser.add_argument("--fresh", action="store_true", help="forget every earlier measurement")
    parser.add_argument("--no-s3", action="store_true", help="skip the push to the S3 server")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where scale.json and scale.png go")
    parser.add_argument("--src", type=Path, help="measure this anonbench source tree (an older version, say)")
    parser.add_argument("--suffix", default="", help="appended to the names of this run's measurements")
    parser.add_argument("--only", default="", help="measurement names to record (the rest only run)")
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        (args.data_dir / "results.json").unlink(missing_ok=True)
    only = set(args.only.split(",")) - {""} or None
    redo = set(args.redo.split(",")) - {""}
    rehearsal = Rehearsal(args.data_dir, redo, args.workers, args.suffix, only, args.src)
    steps: dict[str, Callable[[], None]] = {
        "prepare": lambda: step_prepare(rehearsal, args.scales),
        "images": lambda: step_images(rehearsal, args.image_scales),
        "real": lambda: step_real(rehearsal, args.coco_mini, args.fullsize_scale),
        "evaluate": lambda: step_evaluate(rehearsal, args.eval_scales, args.samples),
        "report": lambda: step_report(
            rehearsal,
            args.eval_scales,
            [g for g in args.report_grids.split(",") if g],
            args.bootstrap_grid,
            args.samples,
        ),
        "dvc": lambda: step_dvc(rehearsal, args.dvc_scales, not args.no_s3),
    }
    start = time.perf_counter()
    for name in args.steps.split(","):
        steps[name]()
    from benchmarks.scale.summary import write

    return write(rehearsal.records, args, time.perf_counter() - start, machine(), args.results)


if __name__ == "__main__":
    main()
