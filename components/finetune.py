"""KFP component: fine-tune the base model with one freeze config (``anonbench finetune``)."""

from components.images import train_component


@train_component
def finetune(workspace: str, freeze: str) -> str:
    """Fine-tune on the anonymized subset with the layers of ``freeze`` frozen into ``models/ft-<freeze>/``."""
    from anonbench.workspace import run_stage

    return run_stage(workspace, "finetune", "--freeze", freeze)
