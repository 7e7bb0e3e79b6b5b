"""KFP component: train one YOLOv10 size on one variant (``anonbench train``)."""

from components.images import train_component


@train_component
def train(workspace: str, variant: str, size: str) -> str:
    """Train YOLOv10-``size`` from scratch into ``models/<variant>-<size>/`` (resumes from last.pt)."""
    from anonbench.workspace import run_stage

    return run_stage(workspace, "train", "--variant", variant, "--size", size)
