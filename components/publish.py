"""KFP component: version a dataset with DVC and push it (``anonbench publish``)."""

from kfp.dsl import Metrics, Output

from components.images import cpu_component


@cpu_component
def publish(workspace: str, target: str, metrics: Output[Metrics]) -> str:
    """DVC-add ``target`` (source, prepared, models or a variant), push it, store its pointer under ``runs/<run>/``."""
    from anonbench.workspace import run_task

    return run_task(workspace, "publish", "--target", target, metrics=metrics)
