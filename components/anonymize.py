"""KFP components: anonymize persons with one method (``anonbench anonymize``).

The classic methods run in the CPU image on ground-truth masks; a DeepPrivacy2 method (or
DP2's detector as the mask source) runs in the DP2 image with a GPU, one task per shard
(``--shard i/n``, the cluster settings' ``dp2_shards``); the last shard to finish writes the
variant's manifest, coverage and annotations.
"""

from kfp.dsl import Metrics, Output

from components.images import cpu_component, dp2_component


@cpu_component
def anonymize(workspace: str, method: str, metrics: Output[Metrics]) -> str:
    """Write the variant ``data/variants/<method>/`` with manifests and coverage."""
    from anonbench.workspace import run_task

    return run_task(workspace, "anonymize", "--method", method, metrics=metrics)


@dp2_component
def anonymize_shard(workspace: str, method: str, shard: str, metrics: Output[Metrics]) -> str:
    """Anonymize shard ``i/n`` of the images with a DeepPrivacy2 method (one GPU)."""
    from anonbench.workspace import run_task

    return run_task(workspace, "anonymize", "--method", method, "--shard", shard, metrics=metrics)
