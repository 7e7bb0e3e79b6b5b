"""KFP components that set a run up and join its fan-outs (no stage of their own)."""

from components.images import cpu_component


@cpu_component
def plan(workspace: str, params_file: str, profile: str, overrides: list) -> str:
    """Resolve the parameters once into ``<workspace>/params.yaml``; returns the workspace."""
    from anonbench.workspace import prepare

    prepare(workspace, params_file, profile, overrides)
    return workspace


@cpu_component
def grid(workspace: str, axis: str) -> list:
    """The items of one fan-out (methods, variants, sizes x variants, ...) from the run's parameters."""
    from pathlib import Path

    from anonbench.config import load_config
    from anonbench.workspace import PARAMS
    from anonbench.workspace import grid as items

    return items(load_config(Path(workspace) / PARAMS), axis)


@cpu_component
def gather(refs: list) -> list:
    """Join a fan-out: the folders its tasks wrote; later fan-outs start after it."""
    return refs
