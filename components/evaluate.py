"""KFP component: score one model on every evaluation variant with the COCO protocol (``anonbench evaluate``)."""

from kfp.dsl import Metrics, Output

from components.images import train_component


@train_component
def evaluate(workspace: str, model: str, metrics: Output[Metrics]) -> str:
    """Write predictions and COCO metrics to ``metrics/eval/<model>_on_<variant>/`` for every evaluation variant."""
    from anonbench.workspace import run_task

    return run_task(workspace, "evaluate", "--model", model, metrics=metrics)
