"""Everything the study's stages left behind, read into one place for the report.

Reads the output contracts (metrics/eval, models/*/train.json, data/prepared
class statistics, data/ssim, data/variants coverage, data/finetune_subset,
metrics/relabel, metrics/drift, metrics/privacy, data/relabel proposals and reviews),
reads each evaluation's bootstrap resamples over the validation images (paired
deltas: the evaluate stage drew them with the same seed; an evaluation without
them, or drawn with other settings, is re-matched from its stored predictions
here), and turns MLflow run ids into links to the tracking UI.

An evaluation is void when its metrics file says so (``"void": true``, with
``void_reason``): it has no AP, and it takes part in no difference or
interval. A file without the key is not void; numbers are never read as void.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anonbench.analysis.bootstrap import Resampled, image_ids_digest, interval, load_resamples, resample
from anonbench.analysis.cocoeval import Scorer
from anonbench.coco import read_instances
from anonbench.config import ORIGINAL, Config
from anonbench.families import DEFAULT_FAMILY
from anonbench.parallel import map_with_progress


@dataclass(frozen=True)
class EvalRecord:
    """One evaluate-stage result (``metrics/eval/<model>_on_<variant>/metrics.json``)."""

    model_id: str
    train_data: str
    model_size: str
    eval_data: str
    freeze: str | None
    run_id: str | None
    stats: dict[str, Any]
    per_class: dict[str, dict[str, float | None]]
    folder: Path
    void_reason: str | None = None
    bootstrap: dict[str, Any] | None = None
    family: str = DEFAULT_FAMILY  # the detector family (YOLOv10 for evaluations written before families)

    @property
    def key(self) -> tuple[str, str]:
        """(model id, evaluation variant)."""
        return (self.model_id, self.eval_data)

    @property
    def void(self) -> bool:
        """The evaluation gave no number (its metrics file's ``void``)."""
        return self.void_reason is not None

    def ap(self, classes: list[str] | None = None, stat: str = "AP") -> float | None:
        """COCO AP (or AP50), or the mean of its per-class values over ``classes`` that have ground truth.

        None for a void evaluation, and where no class of ``classes`` has ground truth.
        """
        if self.void:
            return None
        if classes is None:
            return self.stats.get(stat)
        values = [self.per_class[c][stat] for c in classes if self.per_class.get(c, {}).get(stat) is not None]
        return float(np.mean(values)) if values else None  # type: ignore[arg-type]


def percent(value: float | None) -> str:
    """An AP (0-1) in percent with one decimal, as the paper prints it; ``n/a`` when undefined."""
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


@dataclass(frozen=True)
class Delta:
    """A difference of two APs with its bootstrap interval (None where undefined).

    ``void`` marks a difference not taken because one side is a void evaluation.
    """

    value: float | None
    low: float | None = None
    high: float | None = None
    void: bool = False

    @property
    def interval_known(self) -> bool:
        """Both interval bounds are numbers."""
        return self.low is not None and self.high is not None and not math.isnan(self.low)

    def text(self) -> str:
        """In percentage points: ``+1.2 [-0.3, +2.0]``; ``void`` or ``n/a`` when not taken."""
        if self.value is None:
            return "void" if self.void else "n/a"
        if not self.interval_known:
            return f"{100 * self.value:+.1f} [CI n/a]"
        return f"{100 * self.value:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"  # type: ignore[operator]


def evaluated_image_ids(eval_dir: Path) -> list[int] | None:
    """The images the evaluate stage scored (its manifest's ok records), or None for all of them."""
    manifest = eval_dir / "manifest.json"
    if not manifest.is_file():
        return None
    records = json.loads(manifest.read_text(encoding="utf-8"))["records"]
    return sorted(r["details"]["image_id"] for r in records if r["status"] == "ok")


def evaluated_scorer(eval_dir: Path) -> Scorer:
    """The scorer the evaluate stage used (its metrics.json), or ``coco`` for predictions it did not score.

    ``coco`` also for an evaluation written before the field existed: those were all scored with the COCO
    API, whatever their protocol.
    """
    metrics = eval_dir / "metrics.json"
    scorer: Scorer = _read_json(metrics).get("scorer", "coco") if metrics.is_file() else "coco"
    return scorer


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def load_evaluations(cfg: Config) -> list[EvalRecord]:
    """Every evaluation with a metrics.json, sorted by model id and evaluation variant."""
    records = []
    for path in sorted((cfg.paths.metrics / "eval").glob("*/metrics.json")):
        doc = _read_json(path)
        records.append(
            EvalRecord(
                model_id=doc["model_id"],
                train_data=doc["train_data"],
                model_size=str(doc["model_size"]),
                eval_data=doc["eval_data"],
                freeze=doc.get("freeze"),
                run_id=doc.get("mlflow_run_id"),
                stats={k: v for k, v in doc.items() if not isinstance(v, dict)},
                per_class=doc.get("per_class", {}),
                folder=path.parent,
                void_reason=(doc.get("void_reason") or "no reason given") if doc.get("void") else None,
                bootstrap=doc.get("bootstrap"),
                family=doc.get("family", DEFAULT_FAMILY),
            )
        )
    return records


def rematch_resamples(job: tuple[Path, Path, int, int]) -> tuple[tuple[int, ...], Resampled]:
    """Bootstrap resamples of one evaluation (worker task): match once (by its scorer), accumulate every resample."""
    eval_dir, truth, samples, seed = job
    predictions = _read_json(eval_dir / "predictions.json")
    image_ids = evaluated_image_ids(eval_dir)
    return resample(read_instances(truth), predictions, image_ids, samples, seed, evaluated_scorer(eval_dir))


def stored_resamples(record: EvalRecord, samples: int, seed: int) -> tuple[tuple[int, ...], Resampled] | None:
    """The resamples the evaluate stage kept beside the evaluation, if drawn as asked over the images it lists.

    None when they are missing or were drawn with other settings or over other images (the caller
    re-matches then).
    """
    kept, path = record.bootstrap, record.folder / "resamples.npy"
    if not kept or not path.is_file() or (kept.get("samples"), kept.get("seed")) != (samples, seed):
        return None
    image_ids = evaluated_image_ids(record.folder)
    if image_ids is None or image_ids_digest(image_ids) != kept.get("image_ids_sha256"):
        return None
    return tuple(image_ids), load_resamples(path, kept["classes"])


@dataclass
class Study:
    """The study's results and the bootstrap resamples behind every interval."""

    cfg: Config
    evaluations: list[EvalRecord]
    resamples: dict[tuple[str, str], tuple[tuple[int, ...], Resampled]] = field(default_factory=dict)
    trainings: dict[str, dict[str, Any]] = field(default_factory=dict)
    ssim: dict[str, dict[str, Any]] = field(default_factory=dict)
    coverage: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    relabel: list[dict[str, Any]] = field(default_factory=list)
    proposals: dict[str, dict[str, Any]] = field(default_factory=dict)
    reviews: dict[str, dict[str, Any]] = field(default_factory=dict)
    drift: dict[str, dict[str, Any]] = field(default_factory=dict)
    class_stats: pd.DataFrame | None = None
    subset: dict[str, Any] | None = None
    subset_counts: pd.DataFrame | None = None
    ssim_boxes: dict[str, pd.DataFrame] = field(default_factory=dict)
    privacy: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def families(self) -> list[str]:
        """The detector families evaluated, in ``train.families`` order (then any other found).

        With more than one, the report asks whether its answers depend on the detector.
        """
        found = {e.family for e in self.evaluations}
        return [f for f in self.cfg.train.families if f in found] + sorted(found - set(self.cfg.train.families))

    def find(self, model_id: str, eval_data: str) -> EvalRecord | None:
        """The evaluation of a model on a variant, if it was run."""
        return next((e for e in self.evaluations if e.key == (model_id, eval_data)), None)

    def delta(self, after: EvalRecord, before: EvalRecord, classes: list[str] | None = None, stat: str = "AP") -> Delta:
        """``after - before`` in AP or AP50 (over ``classes`` if given) with a paired bootstrap interval.

        Not taken (``void``) when either evaluation is void. The interval needs both evaluations
        resampled over the same images; otherwise it is n/a.
        """
        if after.void or before.void:
            return Delta(None, void=True)
        a, b = after.ap(classes, stat), before.ap(classes, stat)
        if a is None or b is None:
            return Delta(None)
        pair = self.resamples.get(after.key), self.resamples.get(before.key)
        if pair[0] is None or pair[1] is None or pair[0][0] != pair[1][0]:
            return Delta(a - b)
        iou50 = stat == "AP50"
        samples = pair[0][1].mean(classes, iou50) - pair[1][1].mean(classes, iou50)
        low, high = interval(samples, self.cfg.report.confidence)
        return Delta(a - b, low, high)


def load_study(cfg: Config) -> Study:
    """Read every stage's outputs and resample every evaluation (over ``cfg.n_workers`` processes)."""
    study = Study(cfg, load_evaluations(cfg))
    report = cfg.report
    # A void evaluation takes part in no interval: nothing to resample.
    resampled = [e for e in study.evaluations if not e.void and (e.folder / "predictions.json").is_file()]
    missing = []
    for e in resampled:
        if (stored := stored_resamples(e, report.bootstrap_samples, cfg.seed)) is not None:
            study.resamples[e.key] = stored
        else:
            missing.append(e)
    jobs = [
        (e.folder, cfg.annotation_file(e.eval_data, cfg.data.val_split), report.bootstrap_samples, cfg.seed)
        for e in missing
    ]
    for e, result in zip(
        missing, map_with_progress(rematch_resamples, jobs, cfg.n_workers, "bootstrap", "eval"), strict=True
    ):
        study.resamples[e.key] = result
    study.trainings = {p.parent.name: _read_json(p) for p in sorted(cfg.paths.models.glob("*/train.json"))}
    data = cfg.paths.data
    for variant in cfg.anonymize.methods:
        if (summary := data / "ssim" / variant / "summary.json").is_file():
            study.ssim[variant] = _read_json(summary)
            study.ssim_boxes[variant] = ssim_boxes(data / "ssim" / variant, cfg.data.val_split)
        splits = {s: data / "variants" / variant / f"coverage_{s}.json" for s in cfg.data.splits}
        if found := {s: _read_json(p) for s, p in splits.items() if p.is_file()}:
            study.coverage[variant] = found
        relabelled = data / "relabel" / variant
        if (proposals := relabelled / f"proposals_{cfg.data.val_split}.json").is_file():
            study.proposals[variant] = _read_json(proposals)["counts"]
        if (review := relabelled / f"review_{cfg.data.val_split}.json").is_file():
            study.reviews[variant] = _read_json(review)
        if (drift := cfg.paths.metrics / "drift" / f"{variant}.json").is_file():
            study.drift[variant] = _read_json(drift)
    study.relabel = [_read_json(p) for p in sorted((cfg.paths.metrics / "relabel").glob("*.json"))]
    for audited in (ORIGINAL, *cfg.anonymize.methods):
        if (audit := cfg.paths.metrics / "privacy" / f"{audited}.json").is_file():
            study.privacy[audited] = _read_json(audit)
    if (class_stats := data / "prepared" / cfg.data.train_split / "class_stats.csv").is_file():
        study.class_stats = pd.read_csv(class_stats).set_index("name")
    subset = data / "finetune_subset"
    if (subset / "summary.json").is_file() and (subset / "class_counts.csv").is_file():
        study.subset = _read_json(subset / "summary.json")
        study.subset_counts = pd.read_csv(subset / "class_counts.csv").set_index("class")
    return study


def ssim_boxes(folder: Path, split: str) -> pd.DataFrame:
    """Per-box SSIM of one split in images with a person (the paper's scope), boxes whose SSIM is defined.

    Returns:
        The box table's ``category`` and ``ssim`` columns; empty when the split was not measured.
    """
    if not (folder / f"{split}_boxes.parquet").is_file():
        return pd.DataFrame({"category": pd.Series(dtype=str), "ssim": pd.Series(dtype=float)})
    images = pd.read_parquet(folder / f"{split}_images.parquet", columns=["image_id", "has_person"])
    boxes = pd.read_parquet(folder / f"{split}_boxes.parquet", columns=["image_id", "category", "ssim"])
    chosen = boxes[boxes["image_id"].isin(images.loc[images["has_person"], "image_id"]) & boxes["ssim"].notna()]
    return chosen[["category", "ssim"]].reset_index(drop=True)


class RunLinks:
    """Markdown links from numbers to their MLflow runs in the tracking UI.

    The experiment id comes from the tracking store; a run the store does not know is linked by its
    id alone (the UI's direct run route), so every number still names its run.
    """

    def __init__(self, cfg: Config) -> None:
        """Remember where the store and the UI are; nothing is contacted until a link is made."""
        self._cfg = cfg
        self._ui = cfg.report.tracking_ui.rstrip("/")
        self._experiments: dict[str, str | None] = {}
        self.cited: set[str] = set()
        self.section: list[str] = []  # the runs cited since the last compare link, in order of first citation

    def _experiment(self, run_id: str) -> str | None:
        if run_id not in self._experiments:
            from mlflow import MlflowClient
            from mlflow.exceptions import MlflowException

            try:
                run = MlflowClient(self._cfg.tracking.resolved_uri).get_run(run_id)
                self._experiments[run_id] = run.info.experiment_id
            except MlflowException:
                self._experiments[run_id] = None
        return self._experiments[run_id]

    def url(self, run_id: str) -> str:
        """The UI address of a run."""
        experiment = self._experiment(run_id)
        if experiment is None:
            return f"{self._ui}/#/runs/{run_id}"
        return f"{self._ui}/#/experiments/{experiment}/runs/{run_id}"

    def number(self, value: float | None, run_id: str | None, digits: int = 3) -> str:
        """A number linked to its run; ``n/a`` when undefined, the bare number when no run produced it."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        text = f"{value:.{digits}f}"
        return self.text(text, run_id)

    def text(self, text: str, run_id: str | None) -> str:
        """Any text linked to a run (left plain when there is no run id)."""
        if not run_id:
            return text
        self.cited.add(run_id)
        if run_id not in self.section:
            self.section.append(run_id)
        return f"[{text}]({self.url(run_id)})"

    def compare(self) -> str | None:
        """A link to MLflow's compare view on the runs cited since the last call (one question's runs).

        Returns:
            The Markdown link, or None when fewer than two of those runs are in the tracking store.
        """
        from anonbench.tracking_ui import compare_url

        known = {run_id: self._experiment(run_id) for run_id in self.section}
        self.section = []
        runs = [run_id for run_id, experiment in known.items() if experiment is not None]
        if len(runs) < 2:
            return None
        experiments = sorted({str(known[run_id]) for run_id in runs})
        return f"[Compare these {len(runs)} runs in MLflow]({compare_url(self._ui, runs, experiments)})"

    def find(self, stage: str, **tags: str) -> str | None:
        """The newest run of a stage with the given tags (for stages that keep no run id in their outputs)."""
        from mlflow import MlflowClient

        client = MlflowClient(self._cfg.tracking.resolved_uri)
        experiment = client.get_experiment_by_name(self._cfg.tracking.experiment)
        if experiment is None:
            return None
        query = " and ".join([f"tags.stage = '{stage}'", *(f"tags.{k} = '{v}'" for k, v in tags.items())])
        runs = client.search_runs(
            [experiment.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1
        )
        return runs[0].info.run_id if runs else None
