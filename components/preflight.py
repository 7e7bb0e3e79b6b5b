"""KFP components: the run's preflight, first in the pipeline (``anonbench.preflight``)."""

from components.images import cpu_component, dp2_component


@cpu_component
def preflight(
    workspace: str,
    params_file: str,
    profile: str,
    overrides: list,
    access_mode: str,
    nodes: int,
    gpu_memory: dict,
    publish: bool,
) -> str:
    """Workspace writable, access mode fit, S3 writable (a remote set if publishing), MLflow up, GPU memory enough."""
    from anonbench.preflight import Cluster, task

    cluster = Cluster(access_mode, nodes, gpu_memory, publish)  # type: ignore[arg-type]
    return task(params_file, profile, overrides, workspace, ["workspace", "s3", "mlflow", "gpu-memory"], cluster)


@dp2_component
def preflight_dp2(workspace: str, params_file: str, profile: str, overrides: list) -> str:
    """DeepPrivacy2's checkpoints present with DP2's md5, in the DP2 image and its weights volume."""
    from anonbench.preflight import Cluster, task

    return task(params_file, profile, overrides, workspace, ["dp2-weights"], Cluster())
