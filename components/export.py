"""KFP component: a variant in the Ultralytics YOLO layout (``anonbench export``)."""

from components.images import cpu_component


@cpu_component
def export(workspace: str, variant: str) -> str:
    """Write ``data/yolo/<variant>/``: linked images, labels, dataset yaml, image id map."""
    from anonbench.workspace import run_stage

    return run_stage(workspace, "export", "--variant", variant)
