"""KFP component: the residual-identifiability audit of a variant (``anonbench privacy``)."""

from kfp.dsl import Metrics, Output

from components.images import cpu_component


@cpu_component
def privacy(workspace: str, variant: str, metrics: Output[Metrics]) -> str:
    """Write the faces, linkage attacks and residual people of ``variant`` (``org``: the identity control)."""
    from anonbench.workspace import run_task

    return run_task(workspace, "privacy", "--variant", variant, metrics=metrics)
