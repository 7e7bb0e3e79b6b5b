"""KFP component: validate the source and count classes (``anonbench prepare``)."""

from kfp.dsl import Metrics, Output

from components.images import cpu_component


@cpu_component
def prepare(workspace: str, metrics: Output[Metrics]) -> str:
    """Write the validated index, class statistics and co-occurrence figure of each split."""
    from anonbench.workspace import run_task

    return run_task(workspace, "prepare", metrics=metrics)
