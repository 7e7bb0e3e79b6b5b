"""KFP component: fine-tune the base model with one freeze config (``anonbench finetune``)."""

from kfp.dsl import Metrics, Output

from components.images import train_component


@train_component
def finetune(workspace: str, freeze: str, metrics: Output[Metrics]) -> str:
    """Fine-tune on the anonymized subset with the layers of ``freeze`` frozen into ``models/ft-<freeze>/``."""
    from anonbench.workspace import run_task

    return run_task(workspace, "finetune", "--freeze", freeze, metrics=metrics)
