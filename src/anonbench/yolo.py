"""Detector helpers shared by train, finetune and evaluate: layout paths, models, counts, tracked training.

Ultralytics (and so torch) is imported inside the functions that need it, so
the export stage, which only needs the paths, runs in the CPU image. Ultralytics'
own MLflow integration is switched off by :mod:`anonbench.offline`; the
callbacks here log each training into the run that :func:`train_tracked`
opens, which also resumes that run after an interruption.

YOLOv10 as its paper (and the study's authors) ran it, which Ultralytics 8.4
does only when asked: every training uses YOLOv10's own criterion
(:mod:`anonbench.criterion`), and validation, prediction and layer drift use
its NMS-free one-to-one head (:data:`NMS_FREE`, :func:`use_one2one`). The other detector families
(:mod:`anonbench.families`) train with Ultralytics' own trainer and criterion for them and infer with
their own head.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from anonbench.config import ORIGINAL, Config
from anonbench.families import DEFAULT_FAMILY, spec
from anonbench.io import atomic_write_json
from anonbench.offline import configure_ultralytics
from anonbench.registry import register
from anonbench.tracking import mlflow_run

if TYPE_CHECKING:
    from torch import nn
    from ultralytics.engine.model import Model
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.nn.tasks import BaseModel, DetectionModel

SUMMARY = "train.json"
# YOLOv10's inference: the one-to-one branch's best boxes, no NMS (Ultralytics' `nms=False`). Without it
# Ultralytics 8.4 scores the one-to-many branch plus NMS. Its predictor asks the head for
# max(max_det, 300) candidates, sorted by score, and keeps the first max_det above conf.
NMS_FREE = True
HEAD = "one2one"  # the branch NMS_FREE selects


def check_variant(cfg: Config, variant: str) -> str:
    """Return ``variant`` if it is 'org' or a configured anonymization method.

    Raises:
        ValueError: Naming the variant and the known ones.
    """
    known = [ORIGINAL, *cfg.anonymize.methods]
    if variant not in known:
        raise ValueError(f"variant {variant!r} is not one of {known}")
    return variant


def export_root(cfg: Config, variant: str) -> Path:
    """Root of a variant's YOLO layout: ``data/yolo/<variant>/``."""
    return cfg.paths.data / "yolo" / variant


def dataset_yaml(cfg: Config, variant: str) -> Path:
    """The Ultralytics dataset yaml that export writes for a variant."""
    return export_root(cfg, variant) / "dataset.yaml"


def image_ids_file(cfg: Config, variant: str, split: str) -> Path:
    """JSON mapping each exported image's file stem to its COCO image id."""
    return export_root(cfg, variant) / f"image_ids_{split}.json"


def model_dir(cfg: Config, model_id: str) -> Path:
    """Folder of a trained or fine-tuned model: ``models/<model-id>/`` (``org-n``, ``ft-neck``)."""
    return cfg.paths.models / model_id


def chosen_weights(cfg: Config, model_id: str) -> Path:
    """The checkpoint later stages use: ``models/<model-id>/weights/<train.checkpoint>.pt``.

    ``last`` (the final epoch, as the study's authors used it) or ``best`` (best
    validation fitness, chosen on the validation split that evaluate then
    reports). Evaluation, the fine-tunes' starting point and layer drift all
    read this one, so they describe the same model the grid reports.
    """
    return model_dir(cfg, model_id) / "weights" / f"{cfg.train.checkpoint}.pt"


def require(path: Path, made_by: str) -> Path:
    """Return ``path`` if it exists, else fail with the command that makes it.

    Raises:
        FileNotFoundError: Naming the missing file and the command to run first.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `anonbench {made_by}` first")
    return path


def load_net(weights: Path) -> BaseModel:
    """The network of an Ultralytics checkpoint (float32, eval mode), loaded offline."""
    configure_ultralytics()
    from ultralytics.nn.tasks import load_checkpoint

    return load_checkpoint(weights)[0]


def use_one2one(net: BaseModel) -> BaseModel:
    """Select the head evaluation scores with: YOLOv10's NMS-free one-to-one branch (both stay in the model).

    Returns:
        ``net``, whose forward now returns the one-to-one branch's top-k boxes (and its dense outputs).
    """
    cast("DetectionModel", net).end2end = NMS_FREE
    return net


def load_model(source: str | Path, family: str = DEFAULT_FAMILY) -> Model:
    """An Ultralytics model of ``family`` from a yaml or checkpoint, offline.

    RT-DETR needs Ultralytics' ``RTDETR`` class: its trainer, validator and predictor (the decoder's
    queries, no NMS); ``YOLO`` would run a YOLO predictor's NMS over them.
    """
    configure_ultralytics()
    from ultralytics import RTDETR, YOLO

    return RTDETR(str(source)) if family == "rtdetr" else YOLO(str(source))


def param_counts(net: BaseModel, family: str = DEFAULT_FAMILY) -> dict[str, int]:
    """Parameters of the training graph and of the fused inference graph.

    The paper's 2.3/7.2/15.4/24.4/29.5 M are fused counts: fusing folds batch
    norms into convolutions and drops the branch inference does not use, for YOLOv10 its one-to-many
    training branch (:func:`use_one2one`). The other families have one branch to fuse.
    """
    fused = copy.deepcopy(net)
    if spec(family).nms_arg is False:  # YOLOv10: inference takes the one-to-one branch
        use_one2one(fused)
    fused = fused.fuse()
    return {
        "params": sum(p.numel() for p in net.parameters()),
        "params_fused": sum(p.numel() for p in fused.parameters()),
    }


def check_layers(net: BaseModel, layers: list[int]) -> list[int]:
    """Check that every layer index exists in the model's layer list.

    Returns:
        The indices, unchanged.

    Raises:
        ValueError: Naming the indices that the model does not have.
    """
    count = len(cast("nn.Sequential", net.model))
    missing = [i for i in layers if not 0 <= i < count]
    if missing:
        raise ValueError(f"layer index {missing} does not exist: the model has layers 0..{count - 1}")
    return layers


def runtime_args(cfg: Config, family: str = DEFAULT_FAMILY) -> dict[str, Any]:
    """Ultralytics arguments about where and how a training runs, shared by train and finetune.

    Args:
        cfg: Configuration (``train`` section, seed).
        family: The detector family: its ``nms`` argument picks the head the validation that chooses
            ``best.pt`` scores, the head evaluation uses (fine-tunes are YOLOv10's).
    """
    t = cfg.train
    return {
        "plots": False,  # `train.extra: {plots: true}` turns Ultralytics' figures back on
        **t.extra,
        "imgsz": t.imgsz,
        "deterministic": t.deterministic,
        "seed": cfg.seed,
        "device": t.device,
        "amp": t.amp,
        "workers": t.workers,
        "val": t.val,
        "nms": spec(family).nms_arg,
    }


def metric_names(values: Mapping[str, Any]) -> dict[str, float]:
    """Ultralytics metric keys as MLflow accepts them: ``metrics/mAP50-95(B)`` -> ``metrics/mAP50-95B``."""
    return {key.replace("(", "").replace(")", ""): float(value) for key, value in values.items()}


@dataclass(frozen=True)
class TrainJob:
    """One tracked Ultralytics training: what it starts from, where it lands, how it is tagged.

    Attributes:
        out_dir: ``models/<model-id>/``; Ultralytics writes here directly (``save_dir``).
        start: Model yaml (from scratch) or checkpoint (fine-tune) a fresh run starts from.
        args: Ultralytics training arguments (data, epochs, ...), without ``save_dir``.
        stage: The MLflow ``stage`` tag.
        tags: Further MLflow tags.
        reads: The folders it reads (its data, a fine-tune's base model), for the lineage tags.
        params: Further MLflow parameters (anonbench settings beside the Ultralytics ones).
        metrics: Further MLflow metrics logged once at the start.
        artifacts: Files logged to the run at the start.
        family: The detector family (:mod:`anonbench.families`): its model class and trainer.
    """

    out_dir: Path
    start: str
    args: dict[str, Any]
    stage: str
    tags: dict[str, str]
    reads: list[Path]
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    family: str = DEFAULT_FAMILY


class _Tracker:
    """Ultralytics callbacks that log one training into the active MLflow run."""

    def __init__(self) -> None:
        self.fresh = True  # False once the run is known to be a resumed one, which has its parameters
        self.epoch = -1
        self.summary: dict[str, Any] = {}

    def attach(self, model: Model) -> None:
        events = ("on_pretrain_routine_end", "on_train_batch_start", "on_train_batch_end", "on_train_epoch_end")
        for event in (*events, "on_fit_epoch_end", "on_train_end"):
            model.add_callback(event, getattr(self, event))

    def on_pretrain_routine_end(self, trainer: BaseTrainer) -> None:
        """Log the resolved arguments and frozen parameters once the trainer has set up the model."""
        import mlflow

        net = cast("nn.Module", trainer.model)
        frozen = sorted(name for name, p in net.named_parameters() if not p.requires_grad)
        self.summary.update(start_epoch=trainer.start_epoch, frozen_parameters=len(frozen))
        if self.fresh:  # a resumed run has them already (MLflow refuses to change a logged parameter)
            mlflow.log_params({key: str(value) for key, value in sorted(vars(trainer.args).items())})
            mlflow.log_param("frozen_parameters", len(frozen))
            mlflow.log_text("\n".join(frozen) + "\n", "frozen_parameters.txt")

    def on_train_batch_end(self, trainer: BaseTrainer) -> None:
        """Once, after the first batch: record the criterion that computed its loss (whatever built it)."""
        if "criterion" in self.summary:
            return
        import mlflow

        from anonbench.criterion import describe, summary

        record = describe(cast("BaseModel", trainer.model).criterion)
        self.summary["criterion"] = {**record, "text": summary(record)}  # the report reads the text
        if self.fresh:
            mlflow.log_param("criterion", summary(record))
            mlflow.set_tag("criterion", record["class"])

    def on_train_batch_start(self, trainer: BaseTrainer) -> None:
        """Once, as training starts: record the mode of the BatchNorm layers inside the frozen layers.

        Ultralytics 8.4 puts them in eval mode every epoch, so their running
        statistics stay those of the starting model (releases of 2024 may not
        have done so); the count in each mode goes into the run and train.json.
        """
        if "frozen_batchnorm" in self.summary:
            return
        import mlflow
        from torch import nn

        frozen = tuple(getattr(trainer, "freeze_layer_names", ()))
        norms = [
            m for name, m in cast("nn.Module", trainer.model).named_modules()
            if isinstance(m, nn.BatchNorm2d) and any(f in name for f in frozen)
        ]  # fmt: skip
        record = {"modules": len(norms), "eval_mode": sum(not m.training for m in norms)}
        self.summary["frozen_batchnorm"] = record
        if self.fresh:
            mlflow.log_params({f"frozen_batchnorm_{key}": value for key, value in record.items()})

    def on_train_epoch_end(self, trainer: BaseTrainer) -> None:
        """Remember the epoch just trained, so the final validation can be told apart from it."""
        self.epoch = trainer.epoch

    def on_fit_epoch_end(self, trainer: BaseTrainer) -> None:
        """Log the epoch's losses, validation metrics and learning rates at step = epoch."""
        import mlflow

        if trainer.epoch != self.epoch:  # final_eval's validation of best.pt: logged by on_train_end
            return
        metrics = cast("dict[str, float]", trainer.metrics)
        values = {**trainer.label_loss_items(trainer.tloss, prefix="train"), **metrics, **trainer.lr}
        mlflow.log_metrics(metric_names(values), step=trainer.epoch)

    def on_train_end(self, trainer: BaseTrainer) -> None:
        """Log best.pt's final validation as ``final/...`` and keep it for the summary."""
        import mlflow

        final = metric_names(cast("dict[str, float]", trainer.metrics))
        mlflow.log_metrics({f"final/{key}": value for key, value in final.items()})
        self.summary.update(epochs_done=trainer.epoch + 1, metrics=final)


def _unfinished_epoch(last: Path) -> int | None:
    """The epoch an unfinished training's ``last.pt`` holds; None when there is nothing to resume.

    A finished training's checkpoint has no optimizer state (epoch -1); a
    checkpoint cut short by the interruption does not load: both start over.
    """
    if not last.is_file():
        return None
    from ultralytics.nn.tasks import torch_safe_load

    try:
        ckpt, _ = torch_safe_load(last)
    except Exception:
        return None
    epoch = ckpt.get("epoch", -1)
    return epoch if epoch >= 0 and ckpt.get("optimizer") is not None else None


def _log_missing_epochs(run_id: str, results: Path, last_epoch: int) -> None:
    """Log the checkpointed epochs that results.csv has and the run lacks.

    Ultralytics writes an epoch's results row and checkpoint before the
    callback that logs it, so a kill in between leaves the run without that
    epoch; rows after ``last_epoch`` are trained again and left out.
    """
    import mlflow
    import pandas as pd

    if not results.is_file():
        return
    table = pd.read_csv(results)
    columns = [c for c in table.columns if c not in ("epoch", "time")]
    key = next(iter(metric_names({columns[0]: 0})))
    logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, key)}
    for row in table.to_dict("records"):
        step = int(row["epoch"]) - 1
        if step <= last_epoch and step not in logged:
            mlflow.log_metrics(metric_names({c: row[c] for c in columns}), step=step)


def _trainer(family: str) -> type[BaseTrainer] | None:
    """The trainer of a family: YOLOv10's criterion (:class:`anonbench.criterion.V10Trainer`) for YOLOv10.

    None for every other family: Ultralytics' own trainer for its model class (``DetectionTrainer`` for
    YOLOv8 and YOLO11, ``RTDETRTrainer`` for RT-DETR) with the criterion it builds.
    """
    if family != DEFAULT_FAMILY:
        return None
    from anonbench.criterion import V10Trainer

    return V10Trainer


def train_tracked(cfg: Config, job: TrainJob) -> list[Path]:
    """Run (or resume, or skip) one training and track it as one MLflow run.

    A folder with ``train.json`` is complete and skipped. A folder whose
    ``weights/last.pt`` is an unfinished checkpoint is resumed with
    ``resume=True``, in the same MLflow run. Anything else is cleared and
    trained from ``job.start``. ``train.json`` is written last, atomically.

    Args:
        cfg: Configuration (tracking settings).
        job: What to train and how to tag it.

    Returns:
        ``weights/best.pt``, ``weights/last.pt`` and ``train.json``.
    """
    out = job.out_dir
    weights = out / "weights"
    outputs = [weights / "best.pt", weights / "last.pt", out / SUMMARY]
    if outputs[-1].is_file():
        return outputs
    tags = {"model_id": out.name, **job.tags}
    with mlflow_run(cfg, out.name, job.stage, tags, reads=job.reads) as run:
        import mlflow

        configure_ultralytics()
        from ultralytics import __version__

        epoch = _unfinished_epoch(weights / "last.pt")
        if epoch is None and out.exists():
            shutil.rmtree(out)  # a run killed before its first checkpoint, or a cut-short checkpoint
        model = load_model(job.start if epoch is None else weights / "last.pt", job.family)
        counts = param_counts(model.model, job.family)  # type: ignore[arg-type]
        tracker = _Tracker()
        tracker.attach(model)
        tracker.fresh = not run.data.params  # a resumed run has its parameters (MLflow refuses to change one)
        if tracker.fresh:
            mlflow.log_params({**job.params, **counts, "ultralytics_version": __version__})
            mlflow.log_metrics(job.metrics)
            for artifact in job.artifacts:
                mlflow.log_artifact(str(artifact))
        if epoch is not None:  # Ultralytics takes every other argument from the checkpoint
            _log_missing_epochs(run.info.run_id, out / "results.csv", epoch)
            runtime = {key: job.args[key] for key in ("data", "device", "workers") if key in job.args}
            model.train(resume=True, save_dir=str(out), trainer=_trainer(job.family), **runtime)
        else:
            model.train(**job.args, save_dir=str(out), trainer=_trainer(job.family))
        summary = {
            "model_id": out.name,
            "stage": job.stage,
            **job.tags,
            "epochs": job.args["epochs"],
            "ultralytics_version": __version__,
            **tracker.summary,
            **counts,
            "mlflow_run_id": run.info.run_id,
            "weights": {"best": "weights/best.pt", "last": "weights/last.pt"},
        }
        for path in outputs[:2]:
            mlflow.log_artifact(str(path), artifact_path="weights")
        summary["registered_model"] = register(run, tags, Path(job.args["data"]).parent, job.reads)
        mlflow.log_artifact(str(atomic_write_json(out / SUMMARY, summary)))
    return outputs
