"""KFP component: SSIM of a variant against the original (``anonbench ssim``)."""

from components.images import cpu_component


@cpu_component
def ssim(workspace: str, variant: str) -> str:
    """Write per-image and per-box SSIM tables, the summary and figures of ``variant``."""
    from anonbench.workspace import run_stage

    return run_stage(workspace, "ssim", "--variant", variant)
