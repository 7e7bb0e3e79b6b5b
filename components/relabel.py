"""KFP component: stale-label proposals and their evaluation for a variant (``anonbench relabel``)."""

from components.images import cpu_component


@cpu_component
def relabel(workspace: str, variant: str) -> str:
    """Propose corrected ground truth for ``variant`` and rescore the models' stored predictions against it."""
    from anonbench.workspace import run_stage

    return run_stage(workspace, "relabel", "--variant", variant)
