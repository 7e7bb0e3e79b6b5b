"""A pipeline workspace: the one folder every task of a KFP study run works in.

The KFP pipeline moves datasets by reference, not as KFP artifacts: a run's
tasks share a folder (a volume on the cluster, a local folder under the KFP
local runner) holding ``params.yaml``, ``data/``, ``models/``, ``metrics/`` and
``reports/`` in the same layout ``dvc repro`` writes in the repository. The
first task resolves the parameters once into ``<workspace>/params.yaml``; every
later task runs the same ``anonbench <stage>`` command the DVC stages run, in
the workspace, and hands on the folder it wrote.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from anonbench.config import ORIGINAL, Config, finetune_model_id, load_config, resolve
from anonbench.io import atomic_write_text
from anonbench.stages.anonymize import uses_dp2
from anonbench.tracking import ensure_experiment

PARAMS = "params.yaml"
# What `anonbench.cli.wrote` prints before each output path.
WROTE = "wrote "


class WorkspaceError(RuntimeError):
    """The workspace cannot be used as asked (it holds another configuration, or a stage failed)."""


def prepare(workspace: Path | str, params: Path | str, profile: str | None, overrides: list[str]) -> Path:
    """Resolve ``params`` with a profile and overrides into ``<workspace>/params.yaml`` and validate it.

    The file written is a complete params file whose top level is the resolved
    configuration, so every later task reads it with no further options. A
    workspace holds one configuration: rerunning with the same parameters
    resumes (stages skip finished work), different parameters are refused,
    since finished work would silently mix two configurations.

    Args:
        workspace: The run's folder; created if missing.
        params: Source parameter file (``params.yaml`` of the repository or the image).
        profile: Profile to apply; empty or None for the file's own.
        overrides: ``dotted.key=value`` overrides applied after the profile.

    Returns:
        The resolved parameter file.

    Raises:
        ConfigError: If the parameters are invalid (one line naming the key).
        WorkspaceError: If the workspace already holds different parameters.
    """
    raw = yaml.safe_load(Path(params).read_text(encoding="utf-8"))
    merged = resolve(raw, profile or None, overrides)
    text = yaml.safe_dump({**merged, "profiles": {merged["profile"]: {}}}, sort_keys=False)
    target = Path(workspace) / PARAMS
    if target.is_file() and target.read_text(encoding="utf-8") != text:
        raise WorkspaceError(f"{target}: the workspace holds other parameters; use a new workspace")
    candidate = target.with_name(f".{PARAMS}.new")
    atomic_write_text(candidate, text)
    load_config(candidate)  # fail here, once, rather than in every task
    candidate.replace(target)
    _ensure_experiment(Path(workspace), load_config(target))
    return target


def _ensure_experiment(workspace: Path, cfg: Config) -> None:
    """Create the MLflow store and experiment once, before parallel tasks race to create them.

    Runs in the workspace, where the stages run, so a relative store (``sqlite:///mlflow.db``)
    is the one they will use.
    """
    with contextlib.chdir(workspace):
        ensure_experiment(cfg)


def grid(cfg: Config, axis: str) -> list[Any]:
    """The items one fan-out of the study iterates over.

    Args:
        cfg: The resolved configuration of the run.
        axis: ``anonymize`` (every method), ``anonymize_classic`` / ``anonymize_dp2`` (methods by
            the image they need),
            ``export`` (variants), ``train`` (``{variant, size}``), ``finetune`` (freeze
            configs), ``evaluate_trained`` / ``evaluate_finetuned`` (``{model, on}``),
            ``relabel`` and ``drift`` (anonymized variants).

    Returns:
        A JSON-serializable list.

    Raises:
        KeyError: For an unknown axis.
    """
    methods = cfg.anonymize.methods
    trained = [f"{variant}-{size}" for variant in cfg.train.variants for size in cfg.train.sizes]
    finetuned = [finetune_model_id(name) for name in cfg.finetune.freeze]
    axes: dict[str, list[Any]] = {
        "anonymize": list(methods),
        "anonymize_classic": [m for m in methods if not uses_dp2(cfg, m)],
        "anonymize_dp2": [m for m in methods if uses_dp2(cfg, m)],
        "export": [ORIGINAL, *methods],
        "train": [{"variant": v, "size": s} for v in cfg.train.variants for s in cfg.train.sizes],
        "finetune": list(cfg.finetune.freeze),
        "evaluate_trained": [{"model": m, "on": v} for m in trained for v in cfg.evaluate.variants],
        "evaluate_finetuned": [{"model": m, "on": v} for m in finetuned for v in cfg.evaluate.variants],
        "relabel": list(methods),
        "drift": list(methods),
    }
    if axis not in axes:
        raise KeyError(f"unknown grid axis {axis!r} (have: {', '.join(axes)})")
    return axes[axis]


def run_stage(workspace: Path | str, stage: str, *args: str) -> str:
    """Run ``anonbench <stage> ARGS`` in the workspace with its resolved parameters.

    The stage's output streams to this task's log as it comes.

    Args:
        workspace: The run's folder, prepared by :func:`prepare`.
        stage: CLI command name (fetch, prepare, anonymize, ...).
        *args: The stage's own options (``--method blur``, ...).

    Returns:
        The deepest folder holding everything the stage wrote, relative to the workspace
        (``.`` when it spans several top folders): the reference the next tasks receive.

    Raises:
        WorkspaceError: If the stage exits with an error.
    """
    command = [sys.executable, "-m", "anonbench", stage, "--params", PARAMS, *args]
    print("+", " ".join(command), f"(in {workspace})", flush=True)
    written: list[str] = []
    with subprocess.Popen(command, cwd=workspace, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith(WROTE):
                written.append(line[len(WROTE) :].strip())
    if proc.returncode != 0:
        raise WorkspaceError(f"anonbench {stage} {' '.join(args)} failed with exit code {proc.returncode}")
    common = os.path.commonpath(written) if written else ""
    return common or "."
