"""The compiled study pipeline: what `make pipeline` writes carries the cluster settings.

No Kubernetes here: these tests read the compiled KFP YAML, the file a cluster receives.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.settings import ClusterSettings, load_settings
from pipelines.study import compile_study

REPO = Path(__file__).resolve().parents[2]
GPU_STAGES = ("train", "finetune", "evaluate", "drift")


class Compiled:
    """The two documents of a compiled package: the pipeline spec and the Kubernetes platform spec."""

    def __init__(self, path: Path) -> None:
        self.spec, platform = yaml.safe_load_all(path.read_text())
        self.platform: dict[str, Any] = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        self.executors: dict[str, Any] = self.spec["deploymentSpec"]["executors"]

    def tasks(self) -> Iterator[tuple[str, dict[str, Any], str | None]]:
        """Every task of every DAG: name, task spec, executor label (None for loop groups)."""
        dags = [self.spec["root"], *self.spec["components"].values()]
        for dag in (d["dag"] for d in dags if "dag" in d):
            for name, task in dag["tasks"].items():
                component = self.spec["components"][task["componentRef"]["name"]]
                yield name, task, component.get("executorLabel")

    def loops(self) -> dict[str, dict[str, Any]]:
        """The fan-out tasks of the root DAG by the grid axis they iterate over."""
        root = self.spec["root"]["dag"]["tasks"]
        found = {}
        for task in root.values():
            if "parameterIterator" in task:
                producer = task["parameterIterator"]["items"]["inputParameter"].removeprefix("pipelinechannel--")
                axis = root[producer.removesuffix("-Output")]["inputs"]["parameters"]["axis"]["runtimeValue"]
                found[axis["constant"]] = task
        return found

    def executor_of(self, component: str) -> list[str]:
        """Executor labels of the tasks running ``component`` (a function name of components/); never empty."""
        labels = sorted({label for name, _, label in self.tasks() if label and name.rstrip("-0123456789") == component})
        if not labels:
            raise KeyError(f"no task runs {component!r}")
        return labels


@pytest.fixture(scope="module")
def settings() -> ClusterSettings:
    return load_settings()


@pytest.fixture(scope="module")
def compiled(settings: ClusterSettings, tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    return Compiled(compile_study(settings, tmp_path_factory.mktemp("kfp") / "study.yaml"))


def test_training_and_evaluation_request_gpus_and_cpu_stages_do_not(compiled: Compiled) -> None:
    for stage in GPU_STAGES:
        for label in compiled.executor_of(stage):
            accelerator = compiled.executors[label]["container"]["resources"]["accelerator"]
            assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "1", label
    for stage in ("fetch", "prepare", "export", "ssim", "relabel", "report"):
        for label in compiled.executor_of(stage):
            assert "accelerator" not in compiled.executors[label]["container"].get("resources", {}), label


def test_deepprivacy2_anonymization_gets_a_gpu_and_its_own_image(compiled: Compiled) -> None:
    labels = compiled.executor_of("anonymize")
    images = {compiled.executors[label]["container"]["image"]: label for label in labels}
    assert len(images) == 2  # classic methods on the CPU image, DP2 on its image
    dp2 = next(label for image, label in images.items() if "dp2" in image)
    assert compiled.executors[dp2]["container"]["resources"]["accelerator"]["resourceCount"] == "1"


def test_without_deepprivacy2_every_method_runs_on_the_cpu_image(tmp_path: Path, settings: ClusterSettings) -> None:
    compiled = Compiled(compile_study(settings.model_copy(update={"deepprivacy2": False}), tmp_path / "study.yaml"))

    (label,) = compiled.executor_of("anonymize")
    assert "dp2" not in compiled.executors[label]["container"]["image"]
    assert "anonymize" in compiled.loops() and "anonymize_dp2" not in compiled.loops()


def test_training_gets_a_memory_backed_dev_shm(compiled: Compiled, settings: ClusterSettings) -> None:
    for label in compiled.executor_of("train") + compiled.executor_of("finetune"):
        (mount,) = compiled.platform[label]["emptyDirMounts"]
        assert mount["mountPath"] == "/dev/shm" and mount["medium"] == "Memory"
        assert mount["sizeLimit"] == settings.resources("train").shm
    for label in compiled.executor_of("prepare"):
        assert "emptyDirMounts" not in compiled.platform[label]


def test_every_task_gets_the_s3_and_mlflow_secrets_as_environment(compiled: Compiled) -> None:
    expected = {
        "anonbench-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"},
        "anonbench-mlflow": {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"},
    }
    assert set(compiled.platform) == set(compiled.executors)
    for label, platform in compiled.platform.items():
        found = {s["secretName"]: {k["envVar"] for k in s["keyToEnv"]} for s in platform["secretAsEnv"]}
        assert found == expected, label
        for secret in platform["secretAsEnv"]:
            assert all(k["envVar"] == k["secretKey"] for k in secret["keyToEnv"])


def test_every_task_mounts_the_workspace_volume(compiled: Compiled, settings: ClusterSettings) -> None:
    for label, platform in compiled.platform.items():
        (pvc,) = platform["pvcMount"]
        assert pvc["constant"] == settings.workspace_pvc and pvc["mountPath"] == settings.mount_path, label


def test_every_task_retries_with_backoff(compiled: Compiled, settings: ClusterSettings) -> None:
    tasks = [(name, task) for name, task, label in compiled.tasks() if label]
    assert len(tasks) > 20
    for name, task in tasks:
        policy = task["retryPolicy"]
        assert policy["maxRetryCount"] == settings.retries.count, name
        assert policy["backoffDuration"] == settings.retries.backoff and policy["backoffFactor"] == 2.0, name


def test_caching_is_off_for_training_and_every_workspace_task(compiled: Compiled) -> None:
    trainings = [task for name, task, _ in compiled.tasks() if name in ("train", "finetune")]
    assert len(trainings) == 2
    for name, task, label in compiled.tasks():
        if label:
            assert not task["cachingOptions"].get("enableCache", False), name


def test_gpu_tasks_get_node_selector_and_tolerations(compiled: Compiled, settings: ClusterSettings) -> None:
    for stage, kind in (("train", "train"), ("evaluate", "evaluate")):
        res = settings.resources(kind)
        for label in compiled.executor_of(stage):
            assert compiled.platform[label]["nodeSelector"]["labels"] == res.node_selector
            assert compiled.platform[label]["tolerations"] == [t.model_dump(exclude_none=True) for t in res.tolerations]
    for label in compiled.executor_of("prepare"):
        assert "nodeSelector" not in compiled.platform[label] and "tolerations" not in compiled.platform[label]


def test_fan_outs_iterate_the_run_grid_with_a_parallelism_limit(compiled: Compiled, settings: ClusterSettings) -> None:
    loops = compiled.loops()
    assert set(loops) == {
        "anonymize_classic",
        "anonymize_dp2",
        "export",
        "train",
        "finetune",
        "evaluate_trained",
        "evaluate_finetuned",
        "relabel",
        "drift",
    }
    for loop in loops.values():
        assert loop["iteratorPolicy"]["parallelismLimit"] == settings.parallelism
    assert list(compiled.spec["components"][loops["train"]["componentRef"]["name"]]["dag"]["tasks"]) == ["train"]


def test_training_starts_after_every_export(compiled: Compiled) -> None:
    root = compiled.spec["root"]["dag"]["tasks"]
    export_loop = next(name for name, task in root.items() if task is compiled.loops()["export"])
    joins = [root[name] for name in compiled.loops()["train"]["dependentTasks"] if name.startswith("gather")]
    assert [j["inputs"]["parameters"]["refs"]["taskOutputParameter"]["producerTask"] for j in joins] == [export_loop]


def test_settings_are_compiled_in(tmp_path: Path, settings: ClusterSettings) -> None:
    train = settings.resources("train").model_copy(update={"gpus": 8, "accelerator": "amd.com/gpu"})
    custom = settings.model_copy(update={"parallelism": 2, "tasks": {**settings.tasks, "train": train}})
    compiled = Compiled(compile_study(custom, tmp_path / "study.yaml"))

    for label in compiled.executor_of("train"):
        accelerator = compiled.executors[label]["container"]["resources"]["accelerator"]
        assert accelerator == {**accelerator, "resourceType": "amd.com/gpu", "resourceCount": "8"}
    assert {loop["iteratorPolicy"]["parallelismLimit"] for loop in compiled.loops().values()} == {2}


def test_make_pipeline_command_compiles_with_the_image_from_the_environment(tmp_path: Path) -> None:
    image = "registry.example.com/anonbench-train@sha256:" + "0" * 64
    out = tmp_path / "study.yaml"
    subprocess.run(
        [sys.executable, "-m", "pipelines.study", "--output", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
        env={**os.environ, "ANONBENCH_TRAIN_IMAGE": image},
    )
    compiled = Compiled(out)

    for label in compiled.executor_of("train"):
        assert compiled.executors[label]["container"]["image"] == image
    for label in compiled.executor_of("prepare"):
        assert compiled.executors[label]["container"]["image"] != image
    # The task image carries kfp: no pip install at task start, so tasks run with no network.
    assert all("pip install" not in str(e["container"]["command"]) for e in compiled.executors.values())
