"""What a user sees first in the MLflow UI (3.17): the runs table with anonbench's columns, and compare links.

MLflow 3 lets an experiment say what it is for in its ``mlflow.experimentKind`` tag, and anonbench's
experiment says ``custom_model_development`` (model training). The 3.17 UI, though, shows every
experiment as the browser's "GenAI" / "Model training" switch says (``workflowType`` in the page's
address, else the browser's last choice, else GenAI: the traces overview and an assistant pane); the
tag only decides for UIs without that switch. So the links anonbench prints carry
``workflowType=machine_learning``. The UI also restores a view (columns, sort order) from an
experiment tag ``mlflow.sharedViewState.<key>`` when the runs page is opened with
``viewStateShareKey=<key>``: :data:`VIEW_KEY` holds the documented default columns, :func:`runs_url`
is the link to it.
"""

from __future__ import annotations

import json
from urllib.parse import quote

KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"  # the UI's "Model training" kind
WORKFLOW = "machine_learning"  # the UI switch's "Model training" position
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_KEY = "anonbench"
# The runs table's columns in the UI's own notation (type.`key`), in the order it shows them (its
# Metrics group before its Tags group): what a run scored, then what it is.
COLUMNS = (
    "metrics.`coco/AP`",
    "metrics.`coco/AP50`",
    "tags.`stage`",
    "tags.`model_id`",
    "tags.`train_data`",
    "tags.`eval_data`",
    "tags.`void`",
)


def experiment_tags() -> dict[str, str]:
    """Tags every anonbench experiment carries: its kind and the default view of its runs table."""
    view = {"selectedColumns": list(COLUMNS), "orderByKey": "attributes.start_time", "orderByAsc": False}
    return {KIND_TAG: MODEL_TRAINING, VIEW_TAG_PREFIX + VIEW_KEY: json.dumps(view)}


def runs_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table with the default columns (:data:`COLUMNS`).

    Args:
        base: The UI's address, e.g. ``http://127.0.0.1:5000``.
        experiment_id: The experiment's id in that server's store.
    """
    query = f"workflowType={WORKFLOW}&viewStateShareKey={VIEW_KEY}"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def compare_url(base: str, run_ids: list[str], experiment_ids: list[str]) -> str:
    """MLflow's compare view on exactly these runs (the UI's ``/compare-runs`` route).

    Args:
        base: The UI's address.
        run_ids: The runs, in the order the compare table shows them.
        experiment_ids: The experiments they belong to.
    """
    runs, experiments = (quote(json.dumps(ids, separators=(",", ":"))) for ids in (run_ids, experiment_ids))
    return f"{base.rstrip('/')}/#/compare-runs?runs={runs}&experiments={experiments}"
