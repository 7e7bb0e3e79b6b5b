"""KFP component: score one model on one variant with the COCO protocol (``anonbench evaluate``)."""

from components.images import train_component


@train_component
def evaluate(workspace: str, model: str, on: str) -> str:
    """Write predictions and COCO metrics to ``metrics/eval/<model>_on_<on>/``."""
    from anonbench.workspace import run_stage

    return run_stage(workspace, "evaluate", "--model", model, "--on", on)
