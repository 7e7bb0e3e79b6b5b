"""KFP component: validate the source and count classes (``anonbench prepare``)."""

from components.images import cpu_component


@cpu_component
def prepare(workspace: str) -> str:
    """Write the validated index, class statistics and co-occurrence figure of each split."""
    from anonbench.workspace import run_stage

    return run_stage(workspace, "prepare")
