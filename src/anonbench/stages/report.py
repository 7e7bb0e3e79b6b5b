"""Stage report: the study's answers to Q1-Q8 (DESIGN.md) and Q9 (privacy), the paper's tables and figures beside ours.

Writes ``reports/study.md`` with ``reports/figures/*.png`` beside it and
``reports/study.html``, the same report as one self-contained file (figures
embedded), and logs all of it to one MLflow run (stage ``report``). Names and
units are the paper's: per anonymization method the four combinations Org on
Org, Org on Anon, Anon on Org and Anon on Anon (model trained on ... evaluated
on ...), AP and AP50 in percent with one decimal, differences in percentage
points with a paired bootstrap interval over the validation images. Every
number links to the MLflow run that produced it. A void evaluation (its
metrics file says so: no detections) shows its reason and takes part in no
difference; a question whose inputs are missing says which and how to make
them instead of failing. Reading the stored predictions and tables (and one
validation image per method for Q9's pictures) only: no torch, no inference.
The sections are :mod:`anonbench.report`'s, one module per question; this
module loads the study, writes the files and logs them.
"""

from __future__ import annotations

from pathlib import Path

from anonbench.config import Config
from anonbench.io import atomic_write_text
from anonbench.report.header import TITLE
from anonbench.report.sections import build
from anonbench.study import RunLinks, Study, load_study
from anonbench.tracking import PARENT_TAG, finish_study, mlflow_run


def headline_metrics(study: Study) -> dict[str, float]:
    """The study's headline numbers: how many evaluations, how many void, and each one's AP and AP50.

    Keys are ``evaluations``, ``void_evaluations``, ``AP/<model> on <variant>`` and ``AP50/...``.
    Logged to the study run, they let two studies compare model by model in MLflow's compare view.
    """
    return {
        "evaluations": len(study.evaluations),
        "void_evaluations": sum(record.void for record in study.evaluations),
        **{
            f"{stat}/{record.model_id} on {record.eval_data}": float(record.stats[stat])
            for record in study.evaluations
            if not record.void
            for stat in ("AP", "AP50")
            if record.stats.get(stat) is not None
        },
    }


def run(cfg: Config) -> list[Path]:
    """Build the study report from every stage's outputs and log it to an MLflow run.

    Args:
        cfg: Validated configuration (``report`` settings, paths of every stage's outputs).

    Returns:
        ``reports/study.md``, ``reports/study.html`` and the figures.
    """
    with mlflow_run(cfg, "study report", "report", reads=None) as active:
        import mlflow

        study = load_study(cfg)
        links = RunLinks(cfg)
        out = cfg.paths.reports
        doc, figures = build(cfg, study, links)
        for stale in (out / "figures").glob("*.png"):
            if stale not in figures:
                stale.unlink()
        written = [
            atomic_write_text(out / "study.md", doc.markdown(out)),
            atomic_write_text(out / "study.html", doc.html(TITLE)),
            *figures,
        ]
        mlflow.set_tag("cited_runs", len(links.cited))
        mlflow.log_params({"bootstrap_samples": cfg.report.bootstrap_samples, "confidence": cfg.report.confidence,
                           "per_class_combination": cfg.report.per_class_combination})  # fmt: skip
        mlflow.log_dict({"cited_runs": sorted(links.cited)}, "cited_runs.json")
        mlflow.log_artifact(str(written[0]))
        mlflow.log_artifact(str(written[1]))
        mlflow.log_artifacts(str(out / "figures"), "figures")
        finish_study(mlflow.get_run(active.info.run_id).data.tags[PARENT_TAG], headline_metrics(study))
    return written
