"""KFP component: train one YOLOv10 size on one variant (``anonbench train``)."""

from kfp.dsl import Metrics, Output

from components.images import train_component


@train_component
def train(workspace: str, variant: str, size: str, metrics: Output[Metrics]) -> str:
    """Train YOLOv10-``size`` from scratch into ``models/<variant>-<size>/`` (resumes from last.pt)."""
    from anonbench.workspace import run_task

    return run_task(workspace, "train", "--variant", variant, "--size", size, metrics=metrics)
