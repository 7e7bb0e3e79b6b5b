"""Preflight: what would make a cluster run fail after hours, checked in seconds before it starts.

Each check gives one line, ``ok`` or ``FAIL`` with the reason and the fix; ``anonbench
preflight`` exits non-zero when one fails, and the pipeline's first task (``components/preflight.py``)
fails with it. The checks:

- ``workspace``: the run's folder can be created and written by this process's uid and gid
  (uid 10001, group 0 in the images), and the volume's access mode fits the node spread (a
  ReadWriteOnce claim attaches to one node; pods on a second one wait for it);
- ``s3``: the DVC remote's bucket takes a small object and lets it be deleted, with the task's
  credentials (:mod:`anonbench.s3`); a run that publishes needs a remote;
- ``mlflow``: the tracking server answers ``/health`` and accepts the task's credentials;
- ``dp2-weights``: every checkpoint the DP2 methods of the run load is present, with DP2's md5
  where DP2 publishes one (runs in the DP2 image, which has DP2's configs);
- ``gpu-memory``: each training's estimated GPU memory (``preflight.train_gpu_memory``) fits
  the node class's GPUs.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

from anonbench.anonymizers.dp2_weights import WeightFile, md5sum
from anonbench.config import Config
from anonbench.names import DP2_METHODS
from anonbench.s3 import s3_environment

AccessMode = Literal["ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"]
CHECKS = ("workspace", "s3", "mlflow", "dp2-weights", "gpu-memory")
TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Outcome:
    """The result of one check."""

    check: str
    ok: bool
    detail: str

    @property
    def line(self) -> str:
        """One line: ``preflight <check>: ok|FAIL <detail>``."""
        return f"preflight {self.check}: {'ok' if self.ok else 'FAIL'} {self.detail}"


def check_workspace(folder: Path, access_mode: AccessMode = "ReadWriteMany", nodes: int = 1) -> Outcome:
    """Create ``folder`` and write a file in it as this process; the access mode must fit ``nodes``.

    Args:
        folder: The run's workspace (created if missing, as ``plan`` would).
        access_mode: The workspace claim's access mode (``workspace_access_mode`` in the cluster settings).
        nodes: How many nodes the run's tasks may land on (1: everything on one node).

    Returns:
        The outcome.
    """
    who = f"uid {os.getuid()} gid {os.getgid()}"
    if nodes > 1 and access_mode != "ReadWriteMany":
        return Outcome(
            "workspace",
            False,
            f"{access_mode} claim with tasks on up to {nodes} nodes: pods on a second node wait for the volume "
            "(Multi-Attach); use a ReadWriteMany storage class (infra/README.md, 'Storage')",
        )
    probe = folder / f".anonbench-preflight-{socket.gethostname()}-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"preflight\n")
        probe.unlink()
    except OSError as err:
        return Outcome(
            "workspace",
            False,
            f"{folder} not writable by {who} ({err.strerror}): make the volume's root group-0 writable once "
            "(infra/pipeline/workspace-init.yaml, infra/README.md 'Volume permissions')",
        )
    return Outcome("workspace", True, f"{folder} writable by {who}, {access_mode}")


def check_s3(remote: str | None) -> Outcome:
    """Put a small object under the DVC remote's prefix and delete it, with anonbench's S3 credentials.

    Args:
        remote: The DVC remote URL (``publish.resolved_remote``); a folder or nothing is not S3.

    Returns:
        The outcome.
    """
    if not remote or not remote.startswith("s3://"):
        return Outcome("s3", True, f"not used (DVC remote {remote or 'unset'})")
    import boto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError

    env = s3_environment()
    url = urlparse(remote)
    key = f"{url.path.strip('/')}/.anonbench-preflight/{uuid.uuid4().hex}".lstrip("/")
    where = f"{remote} at {env.get('AWS_ENDPOINT_URL', 'AWS')}"
    client = boto3.client(
        "s3",
        endpoint_url=env.get("AWS_ENDPOINT_URL"),
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
        config=BotoConfig(connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S, retries={"total_max_attempts": 1}),
    )
    try:
        client.put_object(Bucket=url.netloc, Key=key, Body=b"preflight\n")
        client.delete_object(Bucket=url.netloc, Key=key)
    except (BotoCoreError, ClientError) as err:
        reason = " ".join(str(err).split())
        return Outcome("s3", False, f"{where}: cannot write and delete {key} ({reason}); check the anonbench-s3 Secret")
    return Outcome("s3", True, f"{where}: wrote and deleted a test object")


def check_run_s3(cfg: Config, publish: bool) -> Outcome:
    """:func:`check_s3` for the run's remote; a publishing run without one fails (``workspace.check_publish``)."""
    from anonbench.workspace import WorkspaceError, check_publish

    if publish:
        try:
            check_publish(cfg)
        except WorkspaceError as err:
            return Outcome("s3", False, str(err))
    return check_s3(cfg.publish.resolved_remote)


def _get(url: str, headers: Mapping[str, str]) -> int:
    """HTTP status of a GET (errors with a status count as answers)."""
    try:
        with urlopen(Request(url, headers=dict(headers)), timeout=TIMEOUT_S) as response:
            return int(response.status)
    except HTTPError as err:
        return err.code


def check_mlflow(uri: str) -> Outcome:
    """The tracking server answers ``/health`` and a search with the task's credentials.

    Args:
        uri: The tracking URI in force (``tracking.resolved_uri``); a local store needs no server.

    Returns:
        The outcome.
    """
    if urlparse(uri).scheme not in ("http", "https"):
        return Outcome("mlflow", True, f"local store {uri}")
    base = uri.rstrip("/")
    headers = {}
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user:
        secret = f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()
        headers["Authorization"] = f"Basic {base64.b64encode(secret).decode()}"
    try:
        health = _get(f"{base}/health", {})
        search = _get(f"{base}/api/2.0/mlflow/experiments/search?max_results=1", headers)
    except (URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return Outcome("mlflow", False, f"{base} unreachable ({reason}); check MLFLOW_TRACKING_URI (anonbench-mlflow)")
    if health != 200:
        return Outcome("mlflow", False, f"{base}/health answered {health}")
    if search != 200:
        return Outcome("mlflow", False, f"{base} refused the task's credentials (HTTP {search}) as user {user!r}")
    return Outcome("mlflow", True, f"{base} answers, credentials accepted")


def check_dp2_weights(files: Iterable[WeightFile], weights: Path) -> Outcome:
    """Every file present in ``weights``, with DP2's md5 where its config gives one.

    Args:
        files: What the run's DP2 methods load (:func:`anonbench.anonymizers.dp2_weights.required`).
        weights: The weights folder (``anonymize.dp2.weights``).

    Returns:
        The outcome, naming the missing and the corrupt files.
    """
    files = list(dict.fromkeys(files))
    missing = [f.path for f in files if not (weights / f.path).is_file()]
    wrong = [f.path for f in files if f.md5 and f.path not in missing and md5sum(weights / f.path) != f.md5]
    if missing or wrong:
        listed = "; ".join([*(f"missing {p}" for p in missing), *(f"md5 not DP2's: {p}" for p in wrong)])
        return Outcome(
            "dp2-weights",
            False,
            f"{weights}: {listed}; lay them out with anonbench dp2-weights (infra/README.md, 'DeepPrivacy2 weights')",
        )
    return Outcome("dp2-weights", True, f"{weights}: {len(files)} files, md5 checked where DP2 gives one")


def check_run_dp2_weights(cfg: Config) -> Outcome:
    """:func:`check_dp2_weights` for the run's DP2 methods, their files read from DP2's own configs.

    Needs the DP2 environment (the pipeline runs this check in the DP2 image); elsewhere it fails, saying so.
    """
    import contextlib
    import sys

    from anonbench.anonymizers.dp2 import Dp2Unavailable, config_path, repo_dir
    from anonbench.anonymizers.dp2_weights import required

    params = cfg.anonymize.dp2
    methods = [m for m in cfg.anonymize.methods if m in DP2_METHODS]
    try:
        repo = repo_dir(params)
        with contextlib.redirect_stdout(sys.stderr):  # DP2 prints while its modules import
            files = [f for m in methods for f in required(repo, config_path(params, m), not params.untrained)]
    except Dp2Unavailable as err:
        return Outcome("dp2-weights", False, f"cannot list DP2's files here ({err})")
    return check_dp2_weights(files, params.weights)


def check_gpu_memory(cfg: Config, node_gib: Mapping[str, float]) -> Outcome:
    """Each training and fine-tune fits the GPUs of the ``train`` node class, by the estimate in params.

    Args:
        cfg: The run's parameters (sizes, batches, image size, ``preflight.train_gpu_memory``).
        node_gib: GiB of one GPU per kind of task (the cluster settings' ``gpu_memory_gib``).

    Returns:
        The outcome, naming each training that does not fit.
    """
    have = node_gib.get("train")
    if have is None:
        return Outcome("gpu-memory", True, "not checked: no GPU memory given for the train node class")
    table = cfg.preflight.train_gpu_memory
    runs = [(f"train {size}", size, cfg.train.batch) for size in cfg.train.sizes]
    if cfg.finetune.freeze:
        runs.append((f"finetune {cfg.finetune.base.size}", cfg.finetune.base.size, cfg.finetune.batch))
    needs = [(name, batch, table.need(size, batch, cfg.train.imgsz)) for name, size, batch in runs]
    short = [f"{name} at batch {batch} needs ~{need:.1f} GiB" for name, batch, need in needs if need > have]
    if short:
        return Outcome(
            "gpu-memory",
            False,
            f"{'; '.join(short)} at {cfg.train.imgsz} px (estimate: params.yaml preflight.train_gpu_memory), "
            f"the train node class has {have:g} GiB: lower the batch or pick larger GPUs (tasks.train.gpu_memory_gib)",
        )
    top = max(need for _, _, need in needs)
    return Outcome("gpu-memory", True, f"largest training needs ~{top:.1f} GiB (estimate), node class has {have:g}")


@dataclass(frozen=True)
class Cluster:
    """What the checks need to know of the cluster (the pipeline's settings; ``anonbench preflight``'s options)."""

    access_mode: AccessMode = "ReadWriteMany"
    """The workspace claim's access mode."""
    nodes: int = 1
    """How many nodes the run's tasks may land on."""
    node_gib: Mapping[str, float] = field(default_factory=dict)
    """GiB of one GPU per kind of task."""
    publish: bool = False
    """The run publishes its datasets (a DVC remote must be set)."""


def run_checks(
    cfg: Config, workspace: Path, checks: Iterable[str] = CHECKS, cluster: Cluster = Cluster()
) -> list[Outcome]:
    """Run the named checks that apply to ``cfg`` (DP2 weights only when a DP2 method is in the run).

    Args:
        cfg: The run's parameters.
        workspace: The run's folder.
        checks: Names from :data:`CHECKS`.
        cluster: Access mode, node spread, GPU memory, publishing.

    Returns:
        One outcome per check run, in :data:`CHECKS` order.
    """
    wanted = set(checks)
    unknown = wanted - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}: expected some of {', '.join(CHECKS)}")
    runs: dict[str, Callable[[], Outcome]] = {
        "workspace": lambda: check_workspace(workspace, cluster.access_mode, cluster.nodes),
        "s3": lambda: check_run_s3(cfg, cluster.publish),
        "mlflow": lambda: check_mlflow(cfg.tracking.resolved_uri),
        "dp2-weights": lambda: check_run_dp2_weights(cfg),
        "gpu-memory": lambda: check_gpu_memory(cfg, cluster.node_gib),
    }
    if not any(m in DP2_METHODS for m in cfg.anonymize.methods):
        wanted.discard("dp2-weights")
    return [runs[name]() for name in CHECKS if name in wanted]


class PreflightError(RuntimeError):
    """A check failed; the message holds each failed check's line."""


def task(
    params_file: str, profile: str, overrides: list[str], workspace: str, checks: Iterable[str], cluster: Cluster
) -> str:
    """What the pipeline's preflight tasks do: run the checks on the run's parameters, print each line.

    Args:
        params_file: The parameter file (as ``plan`` reads it).
        profile: The run's profile.
        overrides: The run's overrides.
        workspace: The run's folder.
        checks: Names from :data:`CHECKS`.
        cluster: Access mode, node spread, GPU memory, publishing.

    Returns:
        The outcomes as JSON (check -> ok): the task's output.

    Raises:
        PreflightError: With the failed checks' lines; the run stops before its first stage.
    """
    from anonbench.config import load_config

    cfg = load_config(Path(params_file), profile or None, list(overrides))
    outcomes = run_checks(cfg, Path(workspace), checks, cluster)
    for outcome in outcomes:
        print(outcome.line, flush=True)
    failed = [o.line for o in outcomes if not o.ok]
    if failed:
        raise PreflightError(" | ".join(failed))
    return json.dumps({o.check: o.ok for o in outcomes})
