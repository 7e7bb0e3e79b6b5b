"""The compiled study pipeline: what `make pipeline` writes carries the cluster settings.

No Kubernetes here: these tests read the compiled KFP YAML, the file a cluster receives. The
cluster profile (`paper`, with DeepPrivacy2) and the laptop profile (`mini`, without) compile
different pipelines: a fan-out that would be empty is not compiled at all.
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

from anonbench.config import ORIGINAL, load_config
from anonbench.workspace import GATED_AXES, RUN, grid
from components.images import CPU_IMAGE
from pipelines.settings import ClusterSettings, Volume, load_settings, seconds
from pipelines.study import PARAMS_FILE, compile_study

REPO = Path(__file__).resolve().parents[2]
GPU_STAGES = ("anonymize-shard", "train", "finetune", "evaluate", "drift")
ONLY_DP2 = [
    "anonymize.methods=[dp2_fullbody]",
    "train.variants=[org,dp2_fullbody]",
    "evaluate.variants=[org,dp2_fullbody]",
]


class Compiled:
    """The two documents of a compiled package: the pipeline spec and the Kubernetes platform spec."""

    def __init__(self, path: Path) -> None:
        self.spec, platform = yaml.safe_load_all(path.read_text())
        self.platform: dict[str, Any] = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        self.executors: dict[str, Any] = self.spec["deploymentSpec"]["executors"]

    def tasks(self) -> Iterator[tuple[str, dict[str, Any], str | None]]:
        """Every task of every DAG: name, task spec, executor label (None for loops, conditions, inner pipelines)."""
        for _, name, task in self.tasks_by_dag():
            yield name, task, self.spec["components"][task["componentRef"]["name"]].get("executorLabel")

    def tasks_by_dag(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Every task with the name of the component whose DAG holds it (``root`` for the pipeline)."""
        dags = {"root": self.spec["root"], **self.spec["components"]}
        for owner, dag in dags.items():
            for name, task in dag.get("dag", {}).get("tasks", {}).items():
                yield owner, name, task

    def condition_of(self, component: str) -> str | None:
        """The trigger condition of the task that runs the DAG component ``component``, if any."""
        return next(
            (
                t.get("triggerPolicy", {}).get("condition")
                for _, _, t in self.tasks_by_dag()
                if t["componentRef"]["name"] == component
            ),
            None,
        )

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

    def loop_name(self, axis: str) -> str:
        """The root task name of the fan-out over ``axis``."""
        root = self.spec["root"]["dag"]["tasks"]
        return next(name for name, task in root.items() if task is self.loops()[axis])

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
    """The cluster's pipeline: the paper profile, with DeepPrivacy2."""
    return Compiled(compile_study(settings, tmp_path_factory.mktemp("kfp") / "study.yaml", profile="paper"))


@pytest.fixture(scope="module")
def mini(settings: ClusterSettings, tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    """The laptop profile's pipeline: no DeepPrivacy2 method."""
    return Compiled(compile_study(settings, tmp_path_factory.mktemp("kfp") / "study.yaml", profile="mini"))


def test_gpu_work_requests_gpus_and_cpu_stages_do_not(compiled: Compiled) -> None:
    for stage in GPU_STAGES:
        for label in compiled.executor_of(stage):
            accelerator = compiled.executors[label]["container"]["resources"]["accelerator"]
            assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "1", label
    for stage in ("fetch", "prepare", "anonymize", "export", "ssim", "privacy", "relabel", "report", "publish", "grid"):
        for label in compiled.executor_of(stage):
            assert "accelerator" not in compiled.executors[label]["container"].get("resources", {}), label


def test_deepprivacy2_runs_in_its_image_on_one_gpu_per_shard(compiled: Compiled, settings: ClusterSettings) -> None:
    (label,) = compiled.executor_of("anonymize-shard")
    assert "dp2" in compiled.executors[label]["container"]["image"]
    (classic,) = compiled.executor_of("anonymize")
    assert "dp2" not in compiled.executors[classic]["container"]["image"]
    # The shard fan-out's items come from `grid` with the cluster's shard count: method x shard.
    root = compiled.spec["root"]["dag"]["tasks"]
    shard_grid = root[
        compiled.loops()["dp2_shards"]["parameterIterator"]["items"]["inputParameter"]
        .removeprefix("pipelinechannel--")
        .removesuffix("-Output")
    ]
    assert shard_grid["inputs"]["parameters"]["shards"]["runtimeValue"]["constant"] == settings.dp2_shards == 4
    paper = load_config(PARAMS_FILE, "paper")
    assert grid(paper, "dp2_shards", settings.dp2_shards) == [
        {"method": "dp2_fullbody", "shard": f"{i}/4"} for i in range(4)
    ]


def test_a_profile_without_deepprivacy2_compiles_no_dp2_branch(mini: Compiled) -> None:
    assert "anonymize_dp2" not in mini.loops() and "dp2_shards" not in mini.loops()
    with pytest.raises(KeyError):
        mini.executor_of("anonymize-shard")
    assert all("dp2" not in e["container"]["image"] for e in mini.executors.values())


def test_a_profile_with_only_deepprivacy2_compiles_no_classic_branch(tmp_path: Path, settings: ClusterSettings) -> None:
    only = Compiled(compile_study(settings, tmp_path / "study.yaml", profile="paper", overrides=ONLY_DP2))
    assert {"dp2_shards", "anonymize_dp2"} <= set(only.loops()) and "anonymize_classic" not in only.loops()
    with pytest.raises(KeyError):
        only.executor_of("anonymize")


SHUFFLE = [
    "anonymize.containers={shuffle: {image: registry.example.org/anonbench-shuffle:0.1.0, "
    "command: [python3, /opt/shuffle/shuffle.py], counts: [persons_shuffled]}}",
    "anonymize.methods=[blur,pixelate,mask,shuffle]",
]


def test_a_container_method_is_its_job_its_image_and_the_anonymize_that_reads_it(
    tmp_path: Path, settings: ClusterSettings
) -> None:
    """prepare-job writes the job, the method's own image runs its command on it, anonymize reads it; then its
    publish, SSIM and privacy audit as for every method, and export waits for its SSIM."""
    pipeline = Compiled(compile_study(settings, tmp_path / "study.yaml", overrides=SHUFFLE))
    root = pipeline.spec["root"]["dag"]["tasks"]
    (ran,) = [label for name, _, label in pipeline.tasks() if name == "anonymize-shuffle-container"]
    container = pipeline.executors[ran]["container"]
    assert container["image"] == "registry.example.org/anonbench-shuffle:0.1.0"
    assert container["command"] == ["python3", "/opt/shuffle/shuffle.py"]
    assert container["args"] == ["{{$.inputs.parameters['job']}}"]
    task = root["anonymize-shuffle-container"]
    assert task["inputs"]["parameters"]["job"]["taskOutputParameter"]["producerTask"] == "prepare-job"
    assert root["prepare-job"]["inputs"]["parameters"]["method"]["runtimeValue"]["constant"] == "shuffle"
    assert set(root["prepare-job"]["dependentTasks"]) == {"prepare", "publish"}
    readers = [n for n, t in root.items() if t.get("dependentTasks") == ["anonymize-shuffle-container"]]
    (read,) = readers
    assert read.rstrip("-0123456789") == "anonymize"
    assert root[read]["inputs"]["parameters"]["method"]["runtimeValue"]["constant"] == "shuffle"
    after = {n.rstrip("-0123456789") for n, t in root.items() if read in t.get("dependentTasks", [])}
    assert after == {"publish", "ssim", "privacy"}
    (measured,) = [n for n, t in root.items() if n.startswith("ssim") and read in t.get("dependentTasks", [])]
    assert measured in root[pipeline.loop_name("export")]["dependentTasks"]
    assert "shuffle" not in grid(load_config(PARAMS_FILE, "mini", SHUFFLE), "anonymize_classic")
    # The plan refuses a run whose container methods differ from those compiled in.
    plan = root["plan"]["inputs"]["parameters"]["branches"]["runtimeValue"]["constant"]
    assert plan == ["anonymize_classic", "finetune", "container:shuffle"]


@pytest.mark.parametrize(
    ("profile", "overrides"), [("mini", []), ("paper", []), ("paper", ONLY_DP2), ("paper-all-sizes", [])]
)
def test_no_fan_out_iterates_an_empty_list(
    tmp_path: Path, settings: ClusterSettings, profile: str, overrides: list[str]
) -> None:
    pipeline = Compiled(compile_study(settings, tmp_path / "study.yaml", profile=profile, overrides=overrides))
    cfg = load_config(PARAMS_FILE, profile, overrides)
    for axis in pipeline.loops():
        assert grid(cfg, axis, settings.dp2_shards), f"{profile} {overrides}: fan-out over an empty {axis!r}"


@pytest.mark.parametrize(("profile", "trainings"), [("paper", 13), ("paper-all-sizes", 25)])
def test_the_paper_grid_and_its_extension_compile_with_their_trainings_and_evaluations(
    tmp_path: Path, settings: ClusterSettings, compiled: Compiled, profile: str, trainings: int
) -> None:
    pipeline = Compiled(compile_study(settings, tmp_path / "study.yaml", profile=profile))
    assert pipeline.spec["root"]["inputDefinitions"]["parameters"]["profile"]["defaultValue"] == profile
    assert set(pipeline.loops()) == set(compiled.loops())  # the same fan-outs; the grid is read at run time
    cfg = load_config(PARAMS_FILE, profile)
    train = grid(cfg, "train")
    assert len(train) == trainings  # paper: Org and Full-Body n..x, blur, pixelate and mask at m
    assert sum(cell["size"] == "m" for cell in train) == 5
    models = [f"{cell['variant']}-{cell['size']}" for cell in train]
    # One evaluate task per trained model (each scores it on the 5 evaluation variants), one per fine-tune (6).
    assert grid(cfg, "evaluate_trained") == [{"model": m} for m in models]
    assert len(cfg.evaluate.variants) == 5 and len(grid(cfg, "evaluate_finetuned")) == 6


def test_gpu_work_is_scheduled_only_for_cells_that_are_not_done(compiled: Compiled) -> None:
    gated = {axis for axis in compiled.loops() if axis in GATED_AXES}
    assert gated == set(GATED_AXES)
    for stage in GPU_STAGES:
        for owner, name, _task in compiled.tasks_by_dag():
            if name.rstrip("-0123456789") == stage:
                assert owner.startswith("comp-condition"), f"{stage} is not behind its cell's todo"
                condition = compiled.condition_of(owner)
                assert condition == f"inputs.parameter_values['pipelinechannel--todo'] == '{RUN}'"


def test_training_gets_a_memory_backed_dev_shm(compiled: Compiled, settings: ClusterSettings) -> None:
    for label in compiled.executor_of("train") + compiled.executor_of("finetune"):
        (mount,) = compiled.platform[label]["emptyDirMounts"]
        assert mount["mountPath"] == "/dev/shm" and mount["medium"] == "Memory"
        assert mount["sizeLimit"] == settings.resources("train").shm
    for label in compiled.executor_of("prepare"):
        assert "emptyDirMounts" not in compiled.platform[label]


def secret_env(compiled: Compiled, component: str) -> set[tuple[str, str, bool]]:
    """(Secret, variable, optional) of every secret key the tasks running ``component`` get as environment."""
    found = set()
    for label in compiled.executor_of(component):
        for secret in compiled.platform[label].get("secretAsEnv", []):
            assert all(k["envVar"] == k["secretKey"] for k in secret["keyToEnv"])
            found |= {(secret["secretName"], k["envVar"], secret["optional"]) for k in secret["keyToEnv"]}
    return found


S3_KEYS = {
    ("anonbench-s3", "ANONBENCH_S3_ACCESS_KEY_ID", False),
    ("anonbench-s3", "ANONBENCH_S3_SECRET_ACCESS_KEY", False),
    ("anonbench-s3", "ANONBENCH_DVC_REMOTE", False),
    ("anonbench-s3", "ANONBENCH_S3_ENDPOINT_URL", True),  # absent on AWS itself
}
MLFLOW_KEYS = {
    ("anonbench-mlflow", "MLFLOW_TRACKING_URI", False),
    ("anonbench-mlflow", "MLFLOW_TRACKING_USERNAME", True),  # a server without authentication
    ("anonbench-mlflow", "MLFLOW_TRACKING_PASSWORD", True),
}


# The stages that log to MLflow and write nothing to S3.
MLFLOW_ONLY = ("anonymize", "anonymize-shard", "ssim", "privacy", "train", "finetune", "evaluate", "relabel", "drift")


def test_only_the_tasks_that_use_s3_or_mlflow_get_their_secrets(compiled: Compiled) -> None:
    for component in ("plan", "grid", "gather", "fetch", "prepare", "export"):
        assert secret_env(compiled, component) == set(), component
    for component in ("preflight", "publish"):
        assert secret_env(compiled, component) == S3_KEYS | MLFLOW_KEYS, component
    for component in MLFLOW_ONLY:
        assert secret_env(compiled, component) == MLFLOW_KEYS, component
    # No AWS_* variable in any task: the KFP launcher's S3 client reads those (anonbench.s3).
    names = {k["envVar"] for p in compiled.platform.values() for s in p.get("secretAsEnv", []) for k in s["keyToEnv"]}
    assert names and not any(name.startswith("AWS_") for name in names)


@pytest.mark.parametrize("profile", ["paper", "mini"])
def test_every_variant_gets_a_privacy_audit_after_its_data_and_the_report_waits_for_all(
    tmp_path: Path, settings: ClusterSettings, profile: str
) -> None:
    pipeline = Compiled(compile_study(settings, tmp_path / "study.yaml", profile=profile))
    root = pipeline.spec["root"]["dag"]["tasks"]
    audited: list[str] = []
    # The identity control: the original images, after prepare and the source's publish (its lineage hash).
    (org,) = [name for name, task in root.items() if name.rstrip("-0123456789") == "privacy"]
    assert root[org]["inputs"]["parameters"]["variant"]["runtimeValue"]["constant"] == ORIGINAL
    assert set(root[org]["dependentTasks"]) == {"prepare", "publish"}
    audited.append(ORIGINAL)
    # Every method: one audit per item of its anonymize fan-out, after that item's anonymize and publish.
    for axis in ("anonymize_classic", "anonymize_dp2"):
        if axis not in pipeline.loops():
            continue
        loop = pipeline.loops()[axis]
        body = pipeline.spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
        (name,) = [n for n in body if n.rstrip("-0123456789") == "privacy"]
        assert body[name]["inputs"]["parameters"]["variant"] == {
            "componentInputParameter": loop["parameterIterator"]["itemInput"]
        }
        needs = {n.rstrip("-0123456789") for n in body[name].get("dependentTasks", [])}
        assert needs == ({"anonymize", "publish"} if axis == "anonymize_classic" else {"publish"}), axis
        assert pipeline.loop_name(axis) in root["report"]["dependentTasks"]
        audited += grid(load_config(PARAMS_FILE, profile), axis)
        # Nothing but the report waits for an audit: training does not.
        assert all(name not in task.get("dependentTasks", []) for task in body.values())
    assert org in root["report"]["dependentTasks"]
    assert sorted(audited) == sorted(grid(load_config(PARAMS_FILE, profile), "export"))  # org and every method
    res = settings.resources("privacy")
    for label in pipeline.executor_of("privacy"):
        container = pipeline.executors[label]["container"]
        assert "accelerator" not in container["resources"] and container["image"] == CPU_IMAGE
        assert container["resources"]["resourceCpuRequest"] == res.cpu
        assert container["resources"]["resourceMemoryLimit"] == res.memory
        assert int(pipeline.platform[label]["activeDeadlineSeconds"]) == seconds(res.timeout)
    assert secret_env(pipeline, "privacy") == MLFLOW_KEYS  # it logs to MLflow; it never writes to S3


def test_every_task_pulls_with_the_registry_secret_and_has_a_time_limit(
    compiled: Compiled, settings: ClusterSettings
) -> None:
    kinds = {"anonymize-shard": "dp2", "train": "train", "evaluate": "evaluate", "prepare": "cpu", "publish": "cpu"}
    for label, platform in compiled.platform.items():
        assert (
            [s["secretName"] for s in platform["imagePullSecret"]]
            == settings.image_pull_secrets
            == ["anonbench-registry"]
        )
        assert int(platform["activeDeadlineSeconds"]) > 0, label
    for stage, kind in kinds.items():
        for label in compiled.executor_of(stage):
            assert int(compiled.platform[label]["activeDeadlineSeconds"]) == seconds(settings.resources(kind).timeout)
    assert seconds("14d") == 14 * 86400 and seconds("90s") == 90
    with pytest.raises(ValueError, match="expected a number"):
        seconds("a day")


def test_every_task_mounts_the_workspace_volume(compiled: Compiled, settings: ClusterSettings) -> None:
    for label, platform in compiled.platform.items():
        (pvc,) = platform["pvcMount"]
        assert pvc["constant"] == settings.workspace_pvc and pvc["mountPath"] == settings.mount_path, label


def test_deepprivacy2_finds_its_weights_and_can_mount_a_weights_volume(
    tmp_path: Path, settings: ClusterSettings
) -> None:
    (label,) = Compiled(compile_study(settings, tmp_path / "a.yaml", profile="paper")).executor_of("anonymize-shard")
    env = {e["name"]: e.get("value") for e in Compiled(tmp_path / "a.yaml").executors[label]["container"]["env"]}
    # The DP2 image's layout (docker/dp2/Dockerfile; anonbench dp2-weights writes torch/ and fvcore/).
    assert env["ANONBENCH_DP2_WEIGHTS"] == "/opt/dp2-weights"
    assert env["TORCH_HOME"] == "/opt/dp2-weights/torch" and env["FVCORE_CACHE"] == "/opt/dp2-weights/fvcore"
    weights = Volume(pvc="anonbench-dp2-weights", mount_path="/opt/dp2-weights")
    dp2 = settings.resources("dp2").model_copy(update={"volumes": [weights]})
    custom = Compiled(
        compile_study(
            settings.model_copy(update={"tasks": {**settings.tasks, "dp2": dp2}}), tmp_path / "b.yaml", profile="paper"
        )
    )
    mounts = {(m["constant"], m["mountPath"]) for m in custom.platform[label]["pvcMount"]}
    assert mounts == {(settings.workspace_pvc, settings.mount_path), ("anonbench-dp2-weights", "/opt/dp2-weights")}
    (train,) = custom.executor_of("train")
    assert len(custom.platform[train]["pvcMount"]) == 1


def test_every_task_knows_its_image_for_the_lineage_tags(compiled: Compiled) -> None:
    for label, executor in compiled.executors.items():
        env = {e["name"]: e.get("value") for e in executor["container"]["env"]}
        assert env["ANONBENCH_IMAGE"] == executor["container"]["image"], label


def test_every_task_retries_with_backoff(compiled: Compiled, settings: ClusterSettings) -> None:
    tasks = [(name, task) for name, task, label in compiled.tasks() if label]
    assert len(tasks) > 20
    for name, task in tasks:
        policy = task["retryPolicy"]
        assert policy["maxRetryCount"] == settings.retries.count, name
        assert policy["backoffDuration"] == "60s" and policy["backoffFactor"] == 2.0, name
        assert policy["backoffMaxDuration"] == "3600s", name


def test_kfp_caching_is_off_for_every_task(compiled: Compiled) -> None:
    trainings = [task for name, task, _ in compiled.tasks() if name in ("train", "finetune")]
    assert len(trainings) == 2
    for name, task, label in compiled.tasks():
        if label:
            assert not task["cachingOptions"].get("enableCache", False), name


def test_stages_show_their_numbers_and_the_report_in_the_ui(compiled: Compiled) -> None:
    def outputs(component: str) -> dict[str, str]:
        artifacts = compiled.spec["components"][component]["outputDefinitions"].get("artifacts", {})
        return {name: spec["artifactType"]["schemaTitle"] for name, spec in artifacts.items()}

    for stage in (
        "prepare",
        "anonymize",
        "anonymize-shard",
        "ssim",
        "privacy",
        "train",
        "finetune",
        "evaluate",
        "drift",
        "publish",
    ):
        assert outputs(f"comp-{stage}") == {"metrics": "system.Metrics"}, stage
    assert outputs("comp-report") == {"html": "system.HTML", "markdown": "system.Markdown", "matrix": "system.Markdown"}


def test_gpu_tasks_get_node_selector_and_tolerations(compiled: Compiled, settings: ClusterSettings) -> None:
    for stage, kind in (("train", "train"), ("evaluate", "evaluate"), ("anonymize-shard", "dp2")):
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
        "dp2_shards",
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


def test_training_starts_after_every_export(compiled: Compiled) -> None:
    root = compiled.spec["root"]["dag"]["tasks"]
    train_grid = compiled.loops()["train"]["parameterIterator"]["items"]["inputParameter"]
    grid_task = root[train_grid.removeprefix("pipelinechannel--").removesuffix("-Output")]
    joins = [root[name] for name in grid_task["dependentTasks"] if name.startswith("gather")]
    assert [j["inputs"]["parameters"]["refs"]["taskOutputParameter"]["producerTask"] for j in joins] == [
        compiled.loop_name("export")
    ]


def test_settings_are_compiled_in(tmp_path: Path, settings: ClusterSettings) -> None:
    train = settings.resources("train").model_copy(update={"gpus": 8, "accelerator": "amd.com/gpu"})
    custom = settings.model_copy(update={"parallelism": 2, "tasks": {**settings.tasks, "train": train}})
    compiled = Compiled(compile_study(custom, tmp_path / "study.yaml"))

    for label in compiled.executor_of("train"):
        accelerator = compiled.executors[label]["container"]["resources"]["accelerator"]
        assert accelerator == {**accelerator, "resourceType": "amd.com/gpu", "resourceCount": "8"}
    assert {loop["iteratorPolicy"]["parallelismLimit"] for loop in compiled.loops().values()} == {2}


def test_the_pipeline_uses_no_kfp_feature_its_runner_role_does_not_allow(compiled: Compiled) -> None:
    """infra/pipeline/rbac.yaml grants only what this pipeline's tasks need (tests/pipeline/test_infra.py)."""
    text = yaml.safe_dump(compiled.spec) + yaml.safe_dump(compiled.platform)
    assert "createpvc" not in text.lower() and "deletepvc" not in text.lower()  # the driver would create PVCs
    assert all("importer" not in e for e in compiled.spec["deploymentSpec"]["executors"].values())  # no importer
    assert "{{$.pipeline_job_schedule_time_utc}}" not in text  # the driver would read the Workflow


def test_make_pipeline_command_compiles_with_the_image_from_the_environment(tmp_path: Path) -> None:
    image = "registry.example.com/anonbench-train@sha256:" + "0" * 64
    out = tmp_path / "study.yaml"
    subprocess.run(
        [sys.executable, "-m", "pipelines.study", "--profile", "paper", "--output", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
        env={**os.environ, "ANONBENCH_TRAIN_IMAGE": image},
    )
    compiled = Compiled(out)

    for label in compiled.executor_of("train"):
        container = compiled.executors[label]["container"]
        assert container["image"] == image
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["ANONBENCH_IMAGE_DIGEST"] == "sha256:" + "0" * 64
    for label in compiled.executor_of("prepare"):
        assert compiled.executors[label]["container"]["image"] != image
    assert "anonymize_dp2" in compiled.loops()  # compiled for the profile asked for
    # The task image carries kfp: no pip install at task start, so tasks run with no network.
    assert all("pip install" not in str(e["container"]["command"]) for e in compiled.executors.values())


def test_trainings_go_only_to_gpus_with_the_memory_the_settings_ask(
    compiled: Compiled, settings: ClusterSettings
) -> None:
    least = settings.resources("train").gpu_memory_gib
    assert least is not None
    for label in compiled.executor_of("train") + compiled.executor_of("finetune"):
        (term,) = compiled.platform[label]["nodeAffinity"]
        assert term["matchExpressions"] == [
            {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": [str(int(least * 1024) - 1)]}
        ]
    for label in compiled.executor_of("evaluate") + compiled.executor_of("preflight"):
        assert "nodeAffinity" not in compiled.platform[label]


def test_preflight_runs_first_and_the_dp2_one_needs_no_gpu(compiled: Compiled) -> None:
    root = compiled.spec["root"]["dag"]["tasks"]
    assert set(root["plan"]["dependentTasks"]) == {"preflight", "preflight-dp2"}
    assert "dependentTasks" not in root["preflight"] and "dependentTasks" not in root["preflight-dp2"]
    label = root["preflight-dp2"]["componentRef"]["name"].replace("comp-", "exec-")
    assert "accelerator" not in compiled.executors[label]["container"].get("resources", {})
    assert (
        compiled.platform[label]["pvcMount"][0]["pvcNameParameter"]["runtimeValue"]["constant"] == "anonbench-workspace"
    )
