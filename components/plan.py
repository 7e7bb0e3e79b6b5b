"""KFP components that set a run up and join its fan-outs (no stage of their own)."""

from components.images import cpu_component


@cpu_component
def plan(workspace: str, params_file: str, profile: str, overrides: list, branches: list) -> str:
    """Resolve the parameters once into ``<workspace>/params.yaml``; returns the workspace.

    Fails at once when the run needs other fan-outs than ``branches`` (those compiled in). A
    publishing run without a DVC remote was refused before, by the preflight (which has the S3 Secret).
    """
    from anonbench.config import load_config
    from anonbench.workspace import check_branches, prepare

    check_branches(load_config(prepare(workspace, params_file, profile, overrides)), branches)
    return workspace


@cpu_component
def grid(workspace: str, axis: str, shards: int) -> list:
    """The items of one fan-out (methods, variants, sizes x variants, ...) from the run's parameters.

    A GPU fan-out's items carry ``todo``: ``done`` for work the workspace already holds, so the
    pipeline schedules no pod for it; such a grid runs after the fan-out's inputs are complete.
    """
    from pathlib import Path

    from anonbench.config import load_config
    from anonbench.workspace import GATED_AXES, PARAMS, pending
    from anonbench.workspace import grid as items

    found = items(load_config(Path(workspace) / PARAMS), axis, shards)
    return pending(workspace, axis, found) if axis in GATED_AXES else found


@cpu_component
def gather(refs: list) -> list:
    """Join a fan-out: the folders its tasks wrote; later fan-outs start after it."""
    return refs
