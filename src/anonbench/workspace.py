"""A pipeline workspace: the one folder every task of a KFP study run works in.

The KFP pipeline moves datasets by reference, not as KFP artifacts: a run's
tasks share a folder (a volume on the cluster, a local folder under the KFP
local runner) holding ``params.yaml``, ``data/``, ``models/``, ``metrics/`` and
``reports/`` in the same layout ``dvc repro`` writes in the repository. The
first task resolves the parameters once into ``<workspace>/params.yaml``; every
later task runs the same ``anonbench <stage>`` command the DVC stages run, in
the workspace, and hands on the folder it wrote.

A workspace also remembers finished work, as a cache that knows the data
(``.anonbench/stamps/``): a stage that exits 0 leaves a stamp keyed by the
stage and its options, the resolved parameters and the stage's own code (its
import closure, the code deps dvc.yaml lists for it), holding
what it wrote and the stamps of the work it read (:func:`upstream`). A stamp is
current while its key matches, its outputs are still there and the stamps it
read are unchanged; then the stage is not run again, and the GPU fan-outs do
not even schedule the task (:func:`pending`). ``.anonbench/failed/`` records
stages that failed with an exit status within the current submission, so a KFP
retry of a deterministic failure stops at once instead of repeating the work.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import yaml

from anonbench.codebase import stage_code_digest
from anonbench.config import ORIGINAL, Config, finetune_model_id, load_config, model_id, resolve, split_model_id
from anonbench.io import atomic_write_json, atomic_write_text
from anonbench.stages.anonymize import uses_dp2
from anonbench.tracking import ensure_experiment

PARAMS = "params.yaml"
# What `anonbench.cli.wrote` prints before each output path.
WROTE = "wrote "
STATE = Path(".anonbench")
STAMPS = STATE / "stamps"
FAILED = STATE / "failed"
# Fan-outs a run may not need (no classic method, no DP2 method, no freeze config): compiled only when needed,
# since the KFP backend cannot join a fan-out over an empty list.
OPTIONAL_AXES = ("anonymize_classic", "anonymize_dp2", "finetune")
CONTAINER_BRANCH = "container:"
# Fan-outs of GPU work and the stage each cell runs: each cell carries ``todo`` ("run" / "done").
GATED_AXES = {
    "dp2_shards": "anonymize",
    "train": "train",
    "finetune": "finetune",
    "evaluate_trained": "evaluate",
    "evaluate_finetuned": "evaluate",
    "drift": "drift",
}
RUN, DONE = "run", "done"
# Options that do not change what a stage writes, so they are not part of its stamp.
NEUTRAL_OPTIONS = frozenset({"download"})
# Stage outputs whose numbers the KFP UI shows (dsl.Metrics): a file name pattern per stage.
METRIC_FILES = {
    "prepare": "stats.json",
    "anonymize": "coverage_*.json",
    "ssim": "summary.json",
    "train": "train.json",
    "finetune": "train.json",
    "evaluate": "metrics.json",
    "drift": "*.json",
    "privacy": "*.json",
    "publish": "*.dvc",
}


class WorkspaceError(RuntimeError):
    """The workspace cannot be used as asked (it holds another configuration, or a stage failed)."""


class MetricsSink(Protocol):
    """Where a task's numbers go: a KFP ``dsl.Metrics`` artifact (``log_metric``)."""

    def log_metric(self, metric: str, value: float) -> None:
        """Record one number."""


def prepare(workspace: Path | str, params: Path | str, profile: str | None, overrides: list[str]) -> Path:
    """Resolve ``params`` with a profile and overrides into ``<workspace>/params.yaml`` and validate it.

    The file written is a complete params file whose top level is the resolved
    configuration, so every later task reads it with no further options. A
    workspace holds one configuration: rerunning with the same parameters
    resumes (stages skip finished work), different parameters are refused,
    since finished work would silently mix two configurations. A new
    submission also forgets the failures of the previous one (they may have
    been fixed since).

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
    shutil.rmtree(Path(workspace) / FAILED, ignore_errors=True)
    _ensure_experiment(Path(workspace), load_config(target))
    return target


def _ensure_experiment(workspace: Path, cfg: Config) -> None:
    """Create the MLflow store and experiment once, before parallel tasks race to create them.

    Runs in the workspace, where the stages run, so a relative store (``sqlite:///mlflow.db``)
    is the one they will use.
    """
    with contextlib.chdir(workspace):
        ensure_experiment(cfg)


def check_branches(cfg: Config, compiled: list[str]) -> None:
    """Refuse a run whose parameters need other fan-outs than the pipeline was compiled with.

    The pipeline leaves out a fan-out that would be empty (:data:`OPTIONAL_AXES`), decided from the
    profile and overrides it was compiled with; a run with other parameters would hit an empty
    fan-out or miss one.

    Args:
        cfg: The run's resolved configuration.
        compiled: The optional fan-outs compiled into the pipeline.

    Raises:
        WorkspaceError: Naming both sets, when they differ.
    """
    needed = needed_branches(cfg)
    if sorted(needed) != sorted(compiled):
        raise WorkspaceError(
            f"the pipeline was compiled with the fan-outs {sorted(compiled)} but this run's parameters need "
            f"{sorted(needed)}: compile (or submit) it with the run's profile and overrides"
        )


def check_publish(cfg: Config) -> None:
    """Refuse a run that is to publish its datasets when no DVC remote is configured.

    Raises:
        WorkspaceError: Saying where the remote comes from.
    """
    if not cfg.publish.resolved_remote:
        raise WorkspaceError(
            "the pipeline publishes each variant but no DVC remote is configured: set ANONBENCH_DVC_REMOTE "
            "(Secret anonbench-s3 on the cluster) or publish.remote, or compile with publish: false"
        )


def needed_branches(cfg: Config) -> list[str]:
    """The optional fan-outs (:data:`OPTIONAL_AXES`) that have items under ``cfg``, then the container methods.

    Each container method is ``container:<method>``: its image and command are compiled into tasks of its own.
    """
    return [axis for axis in OPTIONAL_AXES if grid(cfg, axis)] + [
        f"{CONTAINER_BRANCH}{method}" for method in grid(cfg, "anonymize_container")
    ]


def grid(cfg: Config, axis: str, shards: int = 1) -> list[Any]:
    """The items one fan-out of the study iterates over.

    Args:
        cfg: The resolved configuration of the run.
        axis: ``anonymize`` (every method), ``anonymize_classic`` / ``anonymize_dp2`` /
            ``anonymize_container`` (methods by the image they need), ``dp2_shards``
            (``{method, shard}``: DP2 methods times ``shards``), ``export`` (variants), ``train``
            (``{variant, family, size}``: ``train.models``, the grid), ``finetune`` (``{freeze}``),
            ``evaluate_trained`` / ``evaluate_finetuned``
            (``{model}``: one task scores a model on every evaluation variant, :func:`cell_commands`),
            ``relabel`` (anonymized variants), ``drift`` (``{variant}``), ``publish`` (what the
            publish stage versions after anonymization: the source and every variant).
        shards: Shards per DP2 method (the cluster settings' ``dp2.shards``).

    Returns:
        A JSON-serializable list. The items of a GPU fan-out (:data:`GATED_AXES`) are the options of
        its stage's command (``{"variant": "org", "family": "yolov10", "size": "n"}`` for
        ``--variant org --family yolov10 --size n``).

    Raises:
        KeyError: For an unknown axis.
    """
    methods = cfg.anonymize.methods
    dp2 = [m for m in methods if uses_dp2(cfg, m)]
    trained = [model_id(variant, size, family) for variant, family, size in cfg.train.models]
    finetuned = [finetune_model_id(name) for name in cfg.finetune.freeze]
    axes: dict[str, list[Any]] = {
        "anonymize": list(methods),
        "anonymize_classic": [m for m in methods if m not in dp2 and m not in cfg.anonymize.containers],
        "anonymize_container": [m for m in methods if m in cfg.anonymize.containers],
        "anonymize_dp2": dp2,
        "dp2_shards": [{"method": m, "shard": f"{i}/{shards}"} for m in dp2 for i in range(shards)],
        "export": [ORIGINAL, *methods],
        "train": [{"variant": v, "family": f, "size": s} for v, f, s in cfg.train.models],
        "finetune": [{"freeze": name} for name in cfg.finetune.freeze],
        "evaluate_trained": [{"model": m} for m in trained],
        "evaluate_finetuned": [{"model": m} for m in finetuned],
        "relabel": list(methods),
        "drift": [{"variant": m} for m in methods],
        "publish": ["source", *methods],
    }
    if axis not in axes:
        raise KeyError(f"unknown grid axis {axis!r} (have: {', '.join(axes)})")
    return axes[axis]


def options(cell: dict[str, Any]) -> list[str]:
    """The command options of a fan-out cell: ``{"variant": "org", "todo": "run"}`` -> ``--variant org``."""
    return [token for key, value in cell.items() if key != "todo" for token in (f"--{key}", str(value))]


def commands(cfg: Config, stage: str, args: list[str]) -> list[list[str]]:
    """The stage runs one task makes: an evaluation without ``--on`` runs once per evaluation variant.

    One GPU pod scores a model on every variant (fewer pods and Argo nodes), each pair still its
    own stamped stage run, as in dvc.yaml's ``evaluate`` matrix.
    """
    if stage == "evaluate" and "--on" not in args:
        return [[*args, "--on", variant] for variant in cfg.evaluate.variants]
    return [args]


def pending(workspace: Path | str, axis: str, cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells of a GPU fan-out, each marked ``todo``: ``done`` when all its stamps are current, else ``run``.

    Computed after the fan-out's inputs are complete, so a resubmitted run schedules no GPU pod
    for work that is already done (the KFP task sits inside ``dsl.If(todo == "run")``).
    """
    stage, stamps = GATED_AXES[axis], _Stamps(Path(workspace))

    def done(cell: dict[str, Any]) -> bool:
        return all(stamps.current(stage, _parse(args)) for args in commands(stamps.cfg, stage, options(cell)))

    return [{**cell, "todo": DONE if done(cell) else RUN} for cell in cells]


def _parse(args: Iterable[str]) -> dict[str, str]:
    """``--key value`` pairs (a bare ``--flag`` maps to ``""``), without output-neutral options."""
    tokens = list(args)
    parsed: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        key = tokens[i].removeprefix("--")
        has_value = i + 1 < len(tokens) and not tokens[i + 1].startswith("--")
        parsed[key] = tokens[i + 1] if has_value else ""
        i += 2 if has_value else 1
    return {k: v for k, v in parsed.items() if k not in NEUTRAL_OPTIONS}


def _cell_name(stage: str, opts: dict[str, str]) -> str:
    """File name of a stage cell's stamp: readable, unique (a hash of the exact options)."""
    readable = "-".join(f"{k}={v}" for k, v in sorted(opts.items()))
    slug = re.sub(r"[^A-Za-z0-9=._-]+", "_", readable)[:80]
    digest = hashlib.sha256(json.dumps([stage, sorted(opts.items())]).encode()).hexdigest()[:8]
    return f"{stage}@{slug}@{digest}.json" if opts else f"{stage}@{digest}.json"


def upstream(cfg: Config, stage: str, opts: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """The work a stage cell reads, as (stage, options it must match) patterns over stamps.

    This is the study's data order (dvc.yaml's deps): a cell is out of date when any stamp matching
    these patterns changed since it ran, and a stage that reruns writes a new stamp, so a change
    travels down the whole chain.

    Args:
        cfg: The run's configuration (the fine-tune's base model and variant).
        stage: The stage of the cell.
        opts: Its options (``{"model": "org-n", "on": "blur"}``).

    Returns:
        Patterns; an empty mapping matches every cell of that stage.
    """

    def made(variant: str) -> list[tuple[str, dict[str, str]]]:
        """The stage that makes a variant's images and annotations."""
        return [("prepare", {})] if variant == ORIGINAL else [("anonymize", {"method": variant})]

    def trained(model_id: str) -> list[tuple[str, dict[str, str]]]:
        """The stage that trained a model."""
        prefix = finetune_model_id("")
        if model_id.startswith(prefix):
            return [("finetune", {"freeze": model_id.removeprefix(prefix)})]
        variant, family, size = split_model_id(model_id)
        return [("train", {"variant": variant, "family": family, "size": size})]

    base = f"{cfg.finetune.base.variant}-{cfg.finetune.base.size}"
    match stage:
        case "prepare":
            return [("fetch", {})]
        case "anonymize":
            return [("prepare", {})]
        case "ssim" | "export" | "privacy":
            return made(opts["variant"])
        case "train":
            return [("export", {"variant": opts["variant"]})]
        case "finetune":
            return [*trained(base), *made(cfg.finetune.variant)]
        case "evaluate":
            return [*trained(opts["model"]), ("export", {"variant": opts["on"]})]
        case "relabel":
            return [("ssim", {"variant": opts["variant"]}), ("evaluate", {"on": opts["variant"]})]
        case "drift":
            return [*trained(base), *made(opts["variant"])]
        case "report":
            every = ("prepare", "anonymize", "ssim", "privacy", "train", "finetune", "evaluate", "relabel", "drift")
            return [(name, {}) for name in every]
        case "publish":
            producers: dict[str, list[tuple[str, dict[str, str]]]] = {
                "source": [("fetch", {})],
                "prepared": [("prepare", {})],
                "models": [("train", {}), ("finetune", {})],
            }
            return producers.get(opts["target"]) or made(opts["target"])
    return []


class _Stamps:
    """The stamps of one workspace and the questions asked of them.

    The parameters and the stamps are read once per instance: use a new
    instance after stamps change (each :func:`run_stage` and :func:`pending` call does).
    """

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.folder = workspace / STAMPS

    def path(self, stage: str, opts: dict[str, str]) -> Path:
        return self.folder / _cell_name(stage, opts)

    @functools.cached_property
    def _params(self) -> str:
        """Digest of the resolved parameters, which every cell's key holds (a workspace never changes them)."""
        return hashlib.sha256((self.workspace / PARAMS).read_bytes()).hexdigest()

    @functools.cached_property
    def cfg(self) -> Config:
        return load_config(self.workspace / PARAMS)

    @functools.cached_property
    def _all(self) -> list[tuple[str, dict[str, Any], str]]:
        """Every stamp: file name, content, digest."""
        paths = sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []
        return [(p.name, json.loads(p.read_bytes()), hashlib.sha256(p.read_bytes()).hexdigest()) for p in paths]

    def key(self, stage: str, opts: dict[str, str]) -> str:
        """What the work of a cell is determined by: stage, options, resolved parameters, the stage's code.

        The code is the stage's own (:func:`anonbench.codebase.stage_code_digest`, the files dvc.yaml
        lists as its deps), not the revision of the whole tree: a new image with a fixed report
        makes only the report's stamp stale.

        A publish also by its remote, which may come from the environment (``ANONBENCH_DVC_REMOTE``):
        publishing to another store is other work.
        """
        remote = {"remote": self.cfg.publish.resolved_remote} if stage == "publish" else {}
        code = stage_code_digest(stage)
        text = json.dumps(
            {"stage": stage, "options": opts, "params": self._params, "code": code, **remote}, sort_keys=True
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def inputs(self, stage: str, opts: dict[str, str]) -> dict[str, str]:
        """Digest of every stamp the cell reads (by :func:`upstream`), by file name."""
        if not self._all:
            return {}
        patterns = upstream(self.cfg, stage, opts)
        return {
            name: digest
            for name, stamp, digest in self._all
            if any(stamp["stage"] == other and wanted.items() <= stamp["options"].items() for other, wanted in patterns)
        }

    def outputs(self, written: list[str]) -> dict[str, Any]:
        """What a stage wrote: a file by size and modification time, a folder by its presence."""
        found: dict[str, Any] = {}
        for name in written:
            path = self.workspace / name
            found[name] = [path.stat().st_size, path.stat().st_mtime_ns] if path.is_file() else "dir"
        return found

    def current(self, stage: str, opts: dict[str, str]) -> dict[str, Any] | None:
        """The cell's stamp if it is current (same key, outputs intact, inputs unchanged), else None."""
        path = self.path(stage, opts)
        if not path.is_file():
            return None
        stamp: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        intact = all(self._intact(name, seen) for name, seen in stamp["outputs"].items())
        if stamp["key"] != self.key(stage, opts) or not intact or stamp["inputs"] != self.inputs(stage, opts):
            return None
        return stamp

    def _intact(self, name: str, seen: Any) -> bool:
        path = self.workspace / name
        if seen == "dir":
            return path.is_dir()
        return path.is_file() and [path.stat().st_size, path.stat().st_mtime_ns] == seen

    def write(
        self, stage: str, opts: dict[str, str], inputs: dict[str, str], written: list[str], reference: str
    ) -> None:
        """Record a finished cell; the token makes every run of it a new stamp for its readers."""
        stamp = {
            "stage": stage,
            "options": opts,
            "key": self.key(stage, opts),
            "inputs": inputs,
            "outputs": self.outputs(written),
            "reference": reference,
            "token": uuid.uuid4().hex,
        }
        atomic_write_json(self.path(stage, opts), stamp)


def is_current(workspace: Path | str, stage: str, *args: str) -> bool:
    """Whether ``anonbench <stage> ARGS`` finished in this workspace and nothing it read changed since."""
    return _Stamps(Path(workspace)).current(stage, _parse(args)) is not None


def stage_command(stage: str, *args: str) -> list[str]:
    """The command a task runs for a stage: this interpreter's ``anonbench`` with the workspace's parameters."""
    return [sys.executable, "-m", "anonbench", stage, "--params", PARAMS, *args]


def run_stage(workspace: Path | str, stage: str, *args: str) -> str:
    """Run ``anonbench <stage> ARGS`` in the workspace with its resolved parameters, unless it is current.

    The stage's output streams to this task's log as it comes. A stage that exits with an error
    status is recorded as failed for the rest of this submission: a retry of the task (what the
    cluster's Argo retry policy allows, docs/orchestration.md) stops at once with the same error
    instead of repeating the work. A stage killed by a signal (the kernel's OOM killer, a node
    drain) is not recorded, so its retry runs it again.

    Args:
        workspace: The run's folder, prepared by :func:`prepare`.
        stage: CLI command name (fetch, prepare, anonymize, ...).
        *args: The stage's own options (``--method blur``, ...).

    Returns:
        The deepest folder holding everything the stage wrote, relative to the workspace
        (``.`` when it spans several top folders): the reference the next tasks receive.

    Raises:
        WorkspaceError: If the stage exits with an error, now or earlier in this submission.
    """
    folder = Path(workspace)
    stamps, opts = _Stamps(folder), _parse(args)
    described = " ".join(["anonbench", stage, *args])
    done = stamps.current(stage, opts)
    if done is not None:
        print(f"= {described}: up to date (finished earlier, nothing it reads changed)", flush=True)
        return str(done["reference"])
    failure = folder / FAILED / _cell_name(stage, opts)
    if failure.is_file() and json.loads(failure.read_text(encoding="utf-8"))["key"] == stamps.key(stage, opts):
        raise WorkspaceError(f"{described} failed earlier in this submission; not repeated (see that attempt's log)")
    inputs = stamps.inputs(stage, opts)
    command = stage_command(stage, *args)
    print("+", " ".join(command), f"(in {workspace})", flush=True)
    written: list[str] = []
    with subprocess.Popen(command, cwd=workspace, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith(WROTE):
                written.append(line[len(WROTE) :].strip())
    if proc.returncode != 0:
        if proc.returncode > 0:  # an exit status: the same inputs fail the same way
            atomic_write_json(failure, {"key": stamps.key(stage, opts), "returncode": proc.returncode})
        raise WorkspaceError(f"{described} failed with exit code {proc.returncode}")
    common = os.path.commonpath(written) if written else ""
    reference = common or "."
    stamps.write(stage, opts, inputs, written, reference)
    return reference


def stage_metrics(workspace: Path | str, stage: str, *args: str) -> dict[str, float]:
    """The numbers a finished stage cell wrote (its :data:`METRIC_FILES`), flattened for the KFP UI.

    Args:
        workspace: The run's folder.
        stage: The stage.
        *args: Its options, as given to :func:`run_stage`.

    Returns:
        ``{"<file stem>/<key>/<key>": value}`` for every finite number (None and text are left out:
        an evaluation with no detections has no AP, not 0).
    """
    pattern = METRIC_FILES.get(stage)
    stamp_path = _Stamps(Path(workspace)).path(stage, _parse(args))
    if pattern is None or not stamp_path.is_file():
        return {}
    written = json.loads(stamp_path.read_text(encoding="utf-8"))["outputs"]
    files: list[Path] = []
    for name in written:
        path = Path(workspace) / name
        files += sorted(path.glob(pattern)) if path.is_dir() else [path] if path.match(pattern) else []
    numbers: dict[str, float] = {}
    for path in files:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) if path.suffix == ".dvc" else _read_json(path)
        numbers.update(_flatten(path.stem, _without_void_scores(doc)))
    return numbers


def _without_void_scores(doc: Any) -> Any:
    """A void evaluation (the model detected nothing) has no AP or AR: its scores are left out, not shown as 0."""
    if isinstance(doc, dict) and doc.get("void"):
        return {k: v for k, v in doc.items() if not k.startswith(("AP", "AR")) and k != "per_class"}
    return doc


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _flatten(prefix: str, doc: Any, depth: int = 3) -> dict[str, float]:
    """Finite numbers of a JSON document, keyed by their path (lists by position), ``depth`` levels deep."""
    if isinstance(doc, bool) or doc is None:
        return {}
    if isinstance(doc, int | float):
        return {prefix: float(doc)} if math.isfinite(doc) else {}
    if depth == 0 or not isinstance(doc, dict | list):
        return {}
    items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    found: dict[str, float] = {}
    for key, value in items:
        found.update(_flatten(f"{prefix}/{key}", value, depth - 1))
    return found


def run_task(workspace: Path | str, stage: str, *args: str, metrics: MetricsSink | None = None) -> str:
    """What a KFP component does: run the stage (:func:`run_stage`, once per :func:`commands`), show its numbers.

    Args:
        workspace: The run's folder.
        stage: CLI command name.
        *args: The stage's options (an evaluation's ``--model`` alone: every evaluation variant).
        metrics: The task's ``dsl.Metrics`` output, if it has one; with several commands each number
            is prefixed by the evaluation variant (``blur/metrics/AP``).

    Returns:
        The reference :func:`run_stage` returns; with several commands, the folder holding theirs.
    """
    runs = commands(load_config(Path(workspace) / PARAMS), stage, list(args))
    references = []
    for run in runs:
        references.append(run_stage(workspace, stage, *run))
        prefix = f"{run[-1]}/" if run != list(args) else ""  # the evaluation variant it added
        for name, value in stage_metrics(workspace, stage, *run).items():
            if metrics is not None:
                metrics.log_metric(prefix + name, value)
    return os.path.commonpath(references)


def evaluation_matrix(workspace: Path | str) -> str:
    """The study's evaluation matrix as Markdown: AP of every model (rows) on every variant (columns).

    A void evaluation (no detection) has no AP: its cell says ``void``; a pair never evaluated is empty.
    """
    from anonbench.study import load_evaluations

    with contextlib.chdir(workspace):
        cfg = load_config(PARAMS)
        evaluations = load_evaluations(cfg)
    variants = list(cfg.evaluate.variants)
    models = sorted({e.model_id for e in evaluations})
    found = {e.key: None if e.stats.get("void") else e.stats.get("AP") for e in evaluations}
    lines = [
        f"COCO AP (0.50:0.95) of each model on each variant's validation split; profile `{cfg.profile}`.",
        "",
        "| model | " + " | ".join(variants) + " |",
        "|---|" + "---:|" * len(variants),
    ]
    for model in models:
        cells = []
        for variant in variants:
            if (model, variant) not in found:
                cells.append("")
            else:
                ap = found[(model, variant)]
                cells.append("void" if ap is None else f"{ap:.3f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
