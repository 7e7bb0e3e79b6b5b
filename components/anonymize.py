"""KFP components: anonymize persons with one method (``anonbench anonymize``).

The same function runs in two images: the CPU image for the classic methods on
ground-truth masks, the DeepPrivacy2 image (with a GPU) for DP2 methods and DP2
detections.
"""

from components.images import cpu_component, dp2_component


@cpu_component
def anonymize(workspace: str, method: str) -> str:
    """Write the variant ``data/variants/<method>/`` with manifests and coverage."""
    from anonbench.workspace import run_stage

    return run_stage(workspace, "anonymize", "--method", method)


anonymize_dp2 = dp2_component(anonymize.python_func)
