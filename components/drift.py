"""KFP component: layer drift of the base model on a variant (``anonbench drift``)."""

from components.images import train_component


@train_component
def drift(workspace: str, variant: str) -> str:
    """Write linear CKA per YOLOv10 layer, original vs ``variant``, to ``metrics/drift/``."""
    from anonbench.workspace import run_stage

    return run_stage(workspace, "drift", "--variant", variant)
