"""The study as a Kubeflow pipeline: the stages of dvc.yaml as tasks over one shared workspace.

Data order: preflight -> plan -> fetch -> prepare -> anonymize (classic | DP2 shards) -> publish, ssim,
privacy -> export -> train (``train.models``) -> finetune (freeze configs) -> evaluate (per model, over
the eval variants) -> relabel, drift (per anonymized variant) -> report. The privacy audit runs per
variant beside its SSIM (the original's, the identity control, after prepare) and holds up only the
report. Each fan-out iterates over a
list the run's own parameters produce (``grid``), so an override changes the grid at run
time; ``gather`` joins a fan-out before the next. Tasks hand on workspace folders, not
datasets (docs/orchestration.md).

Two things are fixed when the pipeline is compiled, from the profile and overrides it is
compiled with: which optional fan-outs exist (a profile without DeepPrivacy2 has no DP2
branch at all: the KFP backend cannot run a fan-out over an empty list), and the cluster
settings. ``plan`` refuses a run whose parameters need other fan-outs.

GPU work (DP2 shards, training, fine-tuning, evaluation, drift) sits inside
``dsl.If(todo == "run")``: the fan-out's grid marks each cell ``done`` when the workspace
already holds its finished, still valid result (``anonbench.workspace``), so a resubmitted
run schedules no GPU pod for it.

Compile: ``python -m pipelines.study [--settings FILE] [--profile P] [--set k=v] [--output FILE]``
(``make pipeline``). No ``from __future__ import annotations`` here: KFP reads the
pipeline function's real annotations.
"""

import argparse
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kfp import compiler, dsl, kubernetes

from anonbench.config import ORIGINAL, ContainerMethod, load_config
from anonbench.workspace import CONTAINER_BRANCH, RUN, needed_branches
from components.anonymize import anonymize, anonymize_shard
from components.container_method import container_task, prepare_job
from components.drift import drift
from components.evaluate import evaluate
from components.export import export
from components.fetch import fetch
from components.finetune import finetune
from components.images import lineage
from components.plan import gather, grid, plan
from components.preflight import preflight, preflight_dp2
from components.prepare import prepare
from components.privacy import privacy
from components.publish import publish
from components.relabel import relabel
from components.report import report
from components.ssim import ssim
from components.train import train
from pipelines.settings import DEFAULT_SETTINGS, ClusterSettings, TaskKind, load_settings, seconds

PIPELINE_NAME = "anonbench-study"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB of one GPU, set by NVIDIA's GPU feature discovery
REPO = Path(__file__).resolve().parents[1]
COMPILED = Path(__file__).with_name("compiled") / "study.yaml"
PARAMS_FILE = REPO / "params.yaml"


def _configure(
    task: dsl.PipelineTask, kind: TaskKind, settings: ClusterSettings, gpus: bool = True
) -> dsl.PipelineTask:
    """Apply the cluster settings to one task: image lineage, volumes, secrets, retries, time limit, resources.

    A task gets a Secret's keys only when the settings name its component there (``secrets.<name>.tasks``).

    KFP's own cache is off for every task: a task's real inputs live in the workspace,
    which KFP's cache key (component, image and input strings) cannot see, so a cached
    evaluation could outlive the model it scored. The workspace's stamps are the cache that
    knows the data: a stage that is current is not run again, and GPU tasks that are current
    are not even scheduled (their fan-out's ``todo``). ``gpus=False`` gives a task of a GPU kind
    its image, volumes and environment but no GPU (the DP2 preflight only reads files).
    """
    lineage(task)
    kubernetes.mount_pvc(task, pvc_name=settings.workspace_pvc, mount_path=settings.mount_path)
    for secret, env in settings.secrets.items():
        if task.component_spec.name not in env.tasks:
            continue
        for keys, optional in ((env.keys, False), (env.optional, True)):
            if keys:
                kubernetes.use_secret_as_env(task, secret, {key: key for key in keys}, optional=optional)
    if settings.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(settings.image_pull_secrets))
    task.set_caching_options(False)
    retries = settings.retries
    task.set_retry(
        num_retries=retries.count,
        backoff_duration=f"{seconds(retries.backoff)}s",
        backoff_factor=retries.factor,
        backoff_max_duration=f"{seconds(retries.max_backoff)}s",
    )
    res = settings.resources(kind)
    kubernetes.set_timeout(task, seconds(res.timeout))
    if res.accelerator and res.gpus and gpus:
        task.set_accelerator_type(res.accelerator).set_accelerator_limit(res.gpus)
    if res.cpu:
        task.set_cpu_request(res.cpu)
    if res.memory:
        task.set_memory_request(res.memory).set_memory_limit(res.memory)
    if res.shm:
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=res.shm)
    for volume in res.volumes:
        kubernetes.mount_pvc(task, pvc_name=volume.pvc, mount_path=volume.mount_path)
    for name, value in res.env.items():
        task.set_env_variable(name, value)
    for key, value in res.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    if res.gpu_memory_gib is not None and gpus:
        least_mib = int(res.gpu_memory_gib * 1024)
        kubernetes.add_node_affinity(
            task, [{"key": GPU_MEMORY_LABEL, "operator": "Gt", "values": [str(least_mib - 1)]}]
        )
    for toleration in res.tolerations:
        kubernetes.add_toleration(task, **toleration.model_dump(exclude_none=True))
    return task


def _if_not_done(component: Any, configure: Callable[[dsl.PipelineTask], dsl.PipelineTask]) -> Any:
    """An inner pipeline that runs ``component`` only when its cell is not done: ``dsl.If(todo == "run")``.

    It takes the component's inputs plus ``todo``, all strings. The condition reads a parameter of
    this inner pipeline, not a field of the loop item: the KFP local runner cannot resolve the
    latter (kfp 2.17).

    Args:
        component: A GPU stage's component (train, evaluate, ...).
        configure: Applies the cluster settings of its kind of task.

    Returns:
        The inner pipeline, used like a component inside the fan-out.
    """
    names = [*component.component_spec.inputs, "todo"]

    def cell(*values: str) -> None:
        inputs = dict(zip(names, values, strict=True))
        with dsl.If(inputs.pop("todo") == RUN, name="not-done"):
            configure(component(**inputs))

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    cell.__signature__ = inspect.Signature([inspect.Parameter(n, kind, annotation=str) for n in names])  # type: ignore[attr-defined]
    return dsl.pipeline(name=f"{component.name}-if-not-done")(cell)


def build(
    settings: ClusterSettings,
    branches: Sequence[str],
    profile: str = "mini",
    overrides: Sequence[str] = (),
    containers: Mapping[str, ContainerMethod] | None = None,
) -> Callable[..., Any]:
    """The study pipeline with ``settings`` and the optional fan-outs ``branches`` compiled in.

    Args:
        settings: Volumes, secrets, fan-out width, shards, retries, time limits and resources.
        branches: Optional fan-outs to include (``anonbench.workspace.OPTIONAL_AXES``), as
            :func:`anonbench.workspace.needed_branches` finds them for the run's parameters.
        profile: Default of the pipeline's ``profile`` parameter.
        overrides: Default of its ``overrides`` parameter.
        containers: The container methods' definitions (``anonymize.containers``); each one named in
            ``branches`` (``container:<method>``) becomes its own three tasks: job, image, read.

    Returns:
        The ``@dsl.pipeline`` function, to compile or to run with the KFP local runner.
    """
    width = settings.parallelism
    default_overrides = list(overrides)

    def on(kind: TaskKind, task: dsl.PipelineTask) -> dsl.PipelineTask:
        return _configure(task, kind, settings)

    dp2_shard = _if_not_done(anonymize_shard, lambda task: on("dp2", task))
    train_cell = _if_not_done(train, lambda task: on("train", task))
    finetune_cell = _if_not_done(finetune, lambda task: on("train", task))
    evaluate_cell = _if_not_done(evaluate, lambda task: on("evaluate", task))
    drift_cell = _if_not_done(drift, lambda task: on("evaluate", task))

    @dsl.pipeline(name=PIPELINE_NAME, description="Anonymize COCO persons, train and cross-evaluate detectors, report.")
    def study(
        workspace: str = f"{settings.mount_path}/study",
        profile: str = profile,
        overrides: list = default_overrides,
        params_file: str = "params.yaml",
        download: bool = False,
    ) -> None:
        """Run the whole study in ``workspace`` with ``params_file``, ``profile`` and ``overrides``."""
        run = {"workspace": workspace, "params_file": params_file, "profile": profile, "overrides": overrides}
        checked = [
            on(
                "cpu",
                preflight(
                    **run,
                    access_mode=settings.workspace_access_mode,
                    nodes=settings.nodes,
                    gpu_memory=settings.gpu_memory,
                    publish=settings.publish,
                ),
            )
        ]
        if "anonymize_dp2" in branches:
            checked.append(_configure(preflight_dp2(**run), "dp2", settings, gpus=False))
        planned = on(
            "cpu",
            plan(
                workspace=workspace,
                params_file=params_file,
                profile=profile,
                overrides=overrides,
                branches=list(branches),
            ),
        ).after(*checked)
        # Tasks take the pipeline parameter, ordered after `plan`: the KFP local runner hands a loop
        # task its loop item in place of an upstream task's output (kfp 2.17).
        ws = workspace

        def items(axis: str, *after: dsl.PipelineTask) -> Any:
            return on("cpu", grid(workspace=ws, axis=axis, shards=settings.dp2_shards)).after(planned, *after).output

        def join(refs: Any) -> dsl.PipelineTask:
            return on("cpu", gather(refs=dsl.Collected(refs)))

        def published(target: Any, *after: dsl.PipelineTask) -> list[dsl.PipelineTask]:
            if not settings.publish:
                return []
            return [on("cpu", publish(workspace=ws, target=target)).after(*after)]

        fetched = on("cpu", fetch(workspace=ws, download=download)).after(planned)
        sourced = published("source", fetched)  # its hash tags every later MLflow run
        prepared = on("cpu", prepare(workspace=ws)).after(fetched)
        published("prepared", prepared)

        # Each variant's privacy audit beside its SSIM, after the variant's publish (`dvc add` relinks its
        # files); only the report waits for the audits.
        audits = [on("privacy", privacy(workspace=ws, variant=ORIGINAL)).after(prepared, *sourced)]
        measured = []  # each variant anonymized, published and measured
        if "anonymize_classic" in branches:
            with dsl.ParallelFor(items("anonymize_classic"), parallelism=width) as method:
                classic = on("cpu", anonymize(workspace=ws, method=method)).after(prepared, *sourced)
                stored = published(method, classic)
                classic_ssim = on("cpu", ssim(workspace=ws, variant=method)).after(classic, *stored)
                audits.append(on("privacy", privacy(workspace=ws, variant=method)).after(classic, *stored))
            measured.append(join(classic_ssim.outputs["Output"]))
        if "anonymize_dp2" in branches:
            with dsl.ParallelFor(items("dp2_shards", prepared, *sourced), parallelism=width) as cell:
                shards = dp2_shard(workspace=ws, method=cell.method, shard=cell.shard, todo=cell.todo)
            with dsl.ParallelFor(items("anonymize_dp2", shards), parallelism=width) as method:
                stored = published(method)
                dp2_ssim = on("cpu", ssim(workspace=ws, variant=method)).after(*stored)
                audits.append(on("privacy", privacy(workspace=ws, variant=method)).after(*stored))
            measured.append(join(dp2_ssim.outputs["Output"]))
        for branch in branches:
            if not branch.startswith(CONTAINER_BRANCH):
                continue
            method = branch.removeprefix(CONTAINER_BRANCH)
            definition = (containers or {})[method]
            job = on("cpu", prepare_job(workspace=ws, method=method)).after(prepared, *sourced)
            ran = on("dp2" if definition.gpu else "cpu", container_task(method, definition)(job=job.output))
            made = on("cpu", anonymize(workspace=ws, method=method)).after(ran)
            stored = published(method, made)
            measured.append(on("cpu", ssim(workspace=ws, variant=method)).after(made, *stored))
            audits.append(on("privacy", privacy(workspace=ws, variant=method)).after(made, *stored))

        with dsl.ParallelFor(items("export"), parallelism=width) as variant:
            exported = on("cpu", export(workspace=ws, variant=variant)).after(prepared, *measured)
        exports = join(exported.output)

        with dsl.ParallelFor(items("train", exports), parallelism=width) as cell:
            trained = train_cell(workspace=ws, variant=cell.variant, family=cell.family, size=cell.size, todo=cell.todo)
        with dsl.ParallelFor(items("evaluate_trained", trained), parallelism=width) as cell:
            scored = evaluate_cell(workspace=ws, model=cell.model, todo=cell.todo)
        evaluations = [scored]
        if "finetune" in branches:
            with dsl.ParallelFor(items("finetune", trained), parallelism=width) as cell:
                tuned = finetune_cell(workspace=ws, freeze=cell.freeze, todo=cell.todo)
            with dsl.ParallelFor(items("evaluate_finetuned", tuned), parallelism=width) as cell:
                scored_ft = evaluate_cell(workspace=ws, model=cell.model, todo=cell.todo)
            evaluations.append(scored_ft)

        with dsl.ParallelFor(items("relabel", *measured, *evaluations), parallelism=width) as variant:
            relabeled = on("cpu", relabel(workspace=ws, variant=variant))
        with dsl.ParallelFor(items("drift", trained), parallelism=width) as cell:
            drifted = drift_cell(workspace=ws, variant=cell.variant, todo=cell.todo)
        reported = on("cpu", report(workspace=ws)).after(join(relabeled.output), drifted, *audits)
        published("models", reported)  # `dvc add` relinks each model file: last, when nothing reads them

    return study


def compile_study(
    settings: ClusterSettings,
    output: Path,
    params_file: Path = PARAMS_FILE,
    profile: str = "mini",
    overrides: Sequence[str] = (),
) -> Path:
    """Compile the study pipeline for a profile and overrides to a KFP YAML package.

    Args:
        settings: Cluster settings to compile in.
        output: The YAML file to write (folders are created).
        params_file: The parameters the runs will use (decides which optional fan-outs exist).
        profile: Profile of the runs (also the pipeline's default).
        overrides: ``dotted.key=value`` overrides of the runs (also the default).

    Returns:
        ``output``.
    """
    cfg = load_config(params_file, profile, list(overrides))
    output.parent.mkdir(parents=True, exist_ok=True)
    pipeline = build(settings, needed_branches(cfg), profile, overrides, cfg.anonymize.containers)
    compiler.Compiler().compile(pipeline, str(output))
    return output


def main() -> None:
    """Command line: compile with a settings file, for a profile and overrides."""
    parser = argparse.ArgumentParser(description="Compile the anonbench study pipeline to KFP YAML.")
    parser.add_argument("--settings", type=Path, default=DEFAULT_SETTINGS, help="cluster settings YAML")
    parser.add_argument("--profile", default="mini", help="params.yaml profile the runs use (default: mini)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="dotted.key=value, repeatable")
    parser.add_argument("--output", type=Path, default=COMPILED, help="compiled pipeline YAML")
    args = parser.parse_args()
    output = compile_study(load_settings(args.settings), args.output, profile=args.profile, overrides=args.overrides)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
