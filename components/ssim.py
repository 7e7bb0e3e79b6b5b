"""KFP component: SSIM of a variant against the original (``anonbench ssim``)."""

from kfp.dsl import Metrics, Output

from components.images import cpu_component


@cpu_component
def ssim(workspace: str, variant: str, metrics: Output[Metrics]) -> str:
    """Write per-image and per-box SSIM tables, the summary and figures of ``variant``."""
    from anonbench.workspace import run_task

    return run_task(workspace, "ssim", "--variant", variant, metrics=metrics)
