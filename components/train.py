"""KFP component: train one detector family and size on one variant (``anonbench train``)."""

from kfp.dsl import Metrics, Output

from components.images import train_component


@train_component
def train(workspace: str, variant: str, family: str, size: str, metrics: Output[Metrics]) -> str:
    """Train ``family``-``size`` from scratch into ``models/<model id>/`` (resumes from last.pt)."""
    from anonbench.workspace import run_task

    return run_task(workspace, "train", "--variant", variant, "--family", family, "--size", size, metrics=metrics)
