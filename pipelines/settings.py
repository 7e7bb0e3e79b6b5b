"""Cluster settings of the study pipeline: what KFP fixes at compile time, validated like params.yaml."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_SETTINGS = Path(__file__).with_name("cluster.yaml")
TaskKind = Literal["cpu", "privacy", "dp2", "train", "evaluate"]
DURATION = re.compile(r"^(\d+)([smhd])$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(duration: str) -> int:
    """``90s``, ``30m``, ``12h`` or ``7d`` in seconds.

    Raises:
        ValueError: For anything else.
    """
    found = DURATION.match(duration)
    if not found:
        raise ValueError(f"{duration!r}: expected a number with s, m, h or d, e.g. 12h")
    return int(found[1]) * SECONDS[found[2]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Toleration(_Strict):
    """A Kubernetes toleration (as kfp-kubernetes takes it)."""

    key: str | None = None
    operator: Literal["Equal", "Exists"] | None = None
    value: str | None = None
    effect: Literal["NoExecute", "NoSchedule", "PreferNoSchedule"] | None = None


class Volume(_Strict):
    """A PersistentVolumeClaim mounted into one kind of task (e.g. DeepPrivacy2's weights cache)."""

    pvc: str
    mount_path: str


class SecretEnv(_Strict):
    """One Kubernetes Secret whose keys become environment variables (same names) of the tasks that use it.

    ``keys`` must be in the Secret (a pod without one does not start); ``optional`` keys may be
    left out (``ANONBENCH_S3_ENDPOINT_URL`` on AWS itself). ``tasks`` names the components that
    get them, by component name; every other task (plan, grid, gather, ...) gets none.
    """

    keys: list[str] = Field(min_length=1)
    optional: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(min_length=1)

    @property
    def all_keys(self) -> list[str]:
        """Required and optional keys."""
        return [*self.keys, *self.optional]


class TaskResources(_Strict):
    """What one kind of task asks the scheduler for, and how long it may run."""

    accelerator: str | None = None
    gpus: Annotated[int, Field(ge=0)] = 0
    cpu: str | None = None
    memory: str | None = None
    shm: str | None = None
    timeout: str = "24h"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    volumes: list[Volume] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    gpu_memory_gib: Annotated[float, Field(gt=0)] | None = None
    """Least memory of one GPU of the node class (GiB, as nvidia-smi shows it): the task's pods go only to
    nodes whose ``nvidia.com/gpu.memory`` label (MiB, set by NVIDIA's GPU feature discovery) is at least
    that, and the preflight checks the trainings' estimated needs against it."""

    @field_validator("timeout")
    @classmethod
    def _duration(cls, timeout: str) -> str:
        seconds(timeout)
        return timeout


class Retries(_Strict):
    """Retries of a failed task, with exponential backoff: count and backoff, not which failures.

    KFP's pipeline spec has no retry condition, and its backend (2.17) writes Argo a
    ``retryStrategy`` without one, so the cluster's Argo ``templateDefaults`` decide: KFP's own
    manifests set ``retryPolicy: OnError``, which retries a lost pod (node loss, preemption) but
    not an OOM kill, a non-zero exit or a time limit. ``infra/argo-retry-policy.patch.json`` sets
    ``Always``; then a stage that failed with an exit status is recorded in the workspace, so its
    retry stops at once (``anonbench.workspace.run_stage``), and a killed one runs again
    (docs/orchestration.md, "Retries"; tests/pipeline/test_retries.py).
    """

    count: Annotated[int, Field(ge=0)] = 2
    backoff: str = "60s"
    factor: Annotated[float, Field(ge=1.0)] = 2.0
    max_backoff: str = "1h"


class ClusterSettings(_Strict):
    """Volumes, secrets, fan-out width, retries and resources of the compiled pipeline.

    ``dp2_shards`` splits each DeepPrivacy2 method into that many tasks, one GPU each
    (``anonbench anonymize --shard i/n``). ``publish`` adds the publish tasks (DVC push of
    each variant to ``ANONBENCH_DVC_REMOTE``); off, a run leaves its data in the workspace only.
    """

    workspace_pvc: str = "anonbench-workspace"
    workspace_access_mode: Literal["ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"] = "ReadWriteMany"
    mount_path: str = "/mnt/anonbench"
    parallelism: Annotated[int, Field(ge=1)] = 4
    dp2_shards: Annotated[int, Field(ge=1)] = 1
    publish: bool = True
    retries: Retries = Retries()
    image_pull_secrets: list[str] = Field(default_factory=list)
    secrets: dict[str, SecretEnv] = Field(default_factory=dict)
    tasks: dict[TaskKind, TaskResources] = Field(default_factory=dict)

    def resources(self, kind: TaskKind) -> TaskResources:
        """Resources of ``kind`` (none requested when the settings leave it out)."""
        return self.tasks.get(kind, TaskResources())

    @property
    def nodes(self) -> int:
        """How many nodes a run's tasks may land on: ``parallelism`` per node class (distinct node selectors)."""
        classes = {tuple(sorted(self.resources(kind).node_selector.items())) for kind in get_args(TaskKind)}
        return self.parallelism * len(classes)

    @property
    def gpu_memory(self) -> dict[str, float]:
        """GiB of one GPU per kind of task, where the settings give it (``gpu_memory_gib``)."""
        return {kind: res.gpu_memory_gib for kind, res in self.tasks.items() if res.gpu_memory_gib is not None}


def load_settings(path: Path | str = DEFAULT_SETTINGS) -> ClusterSettings:
    """Read and validate a cluster settings file.

    Args:
        path: YAML file shaped like ``pipelines/cluster.yaml``.

    Returns:
        The validated settings.
    """
    return ClusterSettings.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
