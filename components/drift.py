"""KFP component: layer drift of the base model on a variant (``anonbench drift``)."""

from kfp.dsl import Metrics, Output

from components.images import train_component


@train_component
def drift(workspace: str, variant: str, metrics: Output[Metrics]) -> str:
    """Write linear CKA per YOLOv10 layer, original vs ``variant``, to ``metrics/drift/``."""
    from anonbench.workspace import run_task

    return run_task(workspace, "drift", "--variant", variant, metrics=metrics)
