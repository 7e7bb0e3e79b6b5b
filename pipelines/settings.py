"""Cluster settings of the study pipeline: what KFP fixes at compile time, validated like params.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_SETTINGS = Path(__file__).with_name("cluster.yaml")
TaskKind = Literal["cpu", "dp2", "train", "evaluate"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Toleration(_Strict):
    """A Kubernetes toleration (as kfp-kubernetes takes it)."""

    key: str | None = None
    operator: Literal["Equal", "Exists"] | None = None
    value: str | None = None
    effect: Literal["NoExecute", "NoSchedule", "PreferNoSchedule"] | None = None


class TaskResources(_Strict):
    """What one kind of task asks the scheduler for."""

    accelerator: str | None = None
    gpus: Annotated[int, Field(ge=0)] = 0
    cpu: str | None = None
    memory: str | None = None
    shm: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)


class Retries(_Strict):
    """Retries of a failed task, with exponential backoff."""

    count: Annotated[int, Field(ge=0)] = 2
    backoff: str = "60s"
    factor: Annotated[float, Field(ge=1.0)] = 2.0


class ClusterSettings(_Strict):
    """Volumes, secrets, fan-out width, retries and resources of the compiled pipeline.

    ``deepprivacy2`` compiles the DP2 fan-out (its own image, a GPU). Without it every method
    runs in the CPU image's fan-out, where a DP2 method stops at once naming the image it needs;
    the KFP local runner needs it off, since it cannot join a fan-out with no items (kfp 2.17).
    """

    workspace_pvc: str = "anonbench-workspace"
    mount_path: str = "/mnt/anonbench"
    deepprivacy2: bool = True
    parallelism: Annotated[int, Field(ge=1)] = 4
    retries: Retries = Retries()
    secrets: dict[str, list[str]] = Field(default_factory=dict)
    tasks: dict[TaskKind, TaskResources] = Field(default_factory=dict)

    def resources(self, kind: TaskKind) -> TaskResources:
        """Resources of ``kind`` (none requested when the settings leave it out)."""
        return self.tasks.get(kind, TaskResources())


def load_settings(path: Path | str = DEFAULT_SETTINGS) -> ClusterSettings:
    """Read and validate a cluster settings file.

    Args:
        path: YAML file shaped like ``pipelines/cluster.yaml``.

    Returns:
        The validated settings.
    """
    return ClusterSettings.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
