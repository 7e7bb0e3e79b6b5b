"""The study as a Kubeflow pipeline: the stages of dvc.yaml as tasks over one shared workspace.

Data order: plan -> fetch -> prepare -> anonymize (classic | DP2) -> ssim ->
export -> train (sizes x variants) -> finetune (freeze configs) -> evaluate
(models x eval variants) -> relabel, drift (per anonymized variant) -> report. Each fan-out iterates over a
list the run's own parameters produce (``grid``), so a profile or an override
changes the grid at run time; ``gather`` joins a fan-out before the next.
Tasks hand on workspace folders, not datasets (docs/orchestration.md).

Compile: ``python -m pipelines.study [--settings FILE] [--output FILE]``
(``make pipeline``). No ``from __future__ import annotations`` here: KFP reads the
pipeline function's real annotations.
"""

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kfp import compiler, dsl, kubernetes

from components.anonymize import anonymize, anonymize_dp2
from components.drift import drift
from components.evaluate import evaluate
from components.export import export
from components.fetch import fetch
from components.finetune import finetune
from components.plan import gather, grid, plan
from components.prepare import prepare
from components.relabel import relabel
from components.report import report
from components.ssim import ssim
from components.train import train
from pipelines.settings import DEFAULT_SETTINGS, ClusterSettings, TaskKind, load_settings

PIPELINE_NAME = "anonbench-study"
COMPILED = Path(__file__).with_name("compiled") / "study.yaml"


def _configure(task: dsl.PipelineTask, kind: TaskKind, settings: ClusterSettings) -> dsl.PipelineTask:
    """Apply the cluster settings to one task: workspace volume, secrets, retries, resources.

    Caching is off for every task: a task's real inputs live in the workspace,
    which KFP's cache key cannot see, so a cached evaluation could outlive the
    model it scored. The stages themselves skip finished work, which is the
    cache that knows the data.
    """
    kubernetes.mount_pvc(task, pvc_name=settings.workspace_pvc, mount_path=settings.mount_path)
    for secret, keys in settings.secrets.items():
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env={key: key for key in keys})
    task.set_caching_options(False)
    task.set_retry(
        num_retries=settings.retries.count,
        backoff_duration=settings.retries.backoff,
        backoff_factor=settings.retries.factor,
    )
    res = settings.resources(kind)
    if res.accelerator and res.gpus:
        task.set_accelerator_type(res.accelerator).set_accelerator_limit(res.gpus)
    if res.cpu:
        task.set_cpu_request(res.cpu)
    if res.memory:
        task.set_memory_request(res.memory).set_memory_limit(res.memory)
    if res.shm:
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=res.shm)
    for key, value in res.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in res.tolerations:
        kubernetes.add_toleration(task, **toleration.model_dump(exclude_none=True))
    return task


def build(settings: ClusterSettings) -> Callable[..., Any]:
    """The study pipeline with ``settings`` compiled in.

    Args:
        settings: Volumes, secrets, fan-out width, retries and resources.

    Returns:
        The ``@dsl.pipeline`` function, to compile or to run with the KFP local runner.
    """
    width = settings.parallelism

    def on(kind: TaskKind, task: dsl.PipelineTask) -> dsl.PipelineTask:
        return _configure(task, kind, settings)

    @dsl.pipeline(name=PIPELINE_NAME, description="Anonymize COCO persons, train and cross-evaluate YOLOv10, report.")
    def study(
        workspace: str = f"{settings.mount_path}/study",
        profile: str = "mini",
        overrides: list = [],  # noqa: B006 (KFP needs a literal default)
        params_file: str = "params.yaml",
        download: bool = False,
    ) -> None:
        """Run the whole study in ``workspace`` with ``params_file``, ``profile`` and ``overrides``."""
        planned = on("cpu", plan(workspace=workspace, params_file=params_file, profile=profile, overrides=overrides))
        # Tasks take the pipeline parameter, ordered after `plan`: the KFP local runner hands a loop
        # task its loop item in place of an upstream task's output (kfp 2.17).
        ws = workspace

        def items(axis: str) -> Any:
            return on("cpu", grid(workspace=ws, axis=axis)).after(planned).output

        def join(refs: Any) -> dsl.PipelineTask:
            return on("cpu", gather(refs=dsl.Collected(refs)))

        fetched = on("cpu", fetch(workspace=ws, download=download)).after(planned)
        prepared = on("cpu", prepare(workspace=ws)).after(fetched)

        cpu_methods = "anonymize_classic" if settings.deepprivacy2 else "anonymize"
        with dsl.ParallelFor(items(cpu_methods), parallelism=width) as method:
            classic = on("cpu", anonymize(workspace=ws, method=method)).after(prepared)
            classic_ssim = on("cpu", ssim(workspace=ws, variant=method)).after(classic)
        anonymized, measured = [join(classic.output)], [join(classic_ssim.output)]
        if settings.deepprivacy2:
            with dsl.ParallelFor(items("anonymize_dp2"), parallelism=width) as method:
                dp2 = on("dp2", anonymize_dp2(workspace=ws, method=method)).after(prepared)
                dp2_ssim = on("cpu", ssim(workspace=ws, variant=method)).after(dp2)
            anonymized.append(join(dp2.output))
            measured.append(join(dp2_ssim.output))

        with dsl.ParallelFor(items("export"), parallelism=width) as variant:
            exported = on("cpu", export(workspace=ws, variant=variant)).after(*anonymized)
        exports = join(exported.output)

        with dsl.ParallelFor(items("train"), parallelism=width) as cell:
            trained = on("train", train(workspace=ws, variant=cell.variant, size=cell.size)).after(exports)
        models = join(trained.output)

        with dsl.ParallelFor(items("finetune"), parallelism=width) as freeze:
            tuned = on("train", finetune(workspace=ws, freeze=freeze)).after(models)
        tuned_models = join(tuned.output)

        with dsl.ParallelFor(items("evaluate_trained"), parallelism=width) as cell:
            scored = on("evaluate", evaluate(workspace=ws, model=cell.model, on=cell.on)).after(models)
        with dsl.ParallelFor(items("evaluate_finetuned"), parallelism=width) as cell:
            scored_ft = on("evaluate", evaluate(workspace=ws, model=cell.model, on=cell.on)).after(tuned_models)
        evaluations = [join(scored.output), join(scored_ft.output)]

        with dsl.ParallelFor(items("relabel"), parallelism=width) as variant:
            relabeled = on("cpu", relabel(workspace=ws, variant=variant)).after(*measured, *evaluations)
        with dsl.ParallelFor(items("drift"), parallelism=width) as variant:
            drifted = on("evaluate", drift(workspace=ws, variant=variant)).after(models)
        on("cpu", report(workspace=ws)).after(join(relabeled.output), join(drifted.output))

    return study


def compile_study(settings: ClusterSettings, output: Path) -> Path:
    """Compile the study pipeline to a KFP YAML package.

    Args:
        settings: Cluster settings to compile in.
        output: The YAML file to write (folders are created).

    Returns:
        ``output``.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(settings), str(output))
    return output


def main() -> None:
    """Command line: compile with a settings file."""
    parser = argparse.ArgumentParser(description="Compile the anonbench study pipeline to KFP YAML.")
    parser.add_argument("--settings", type=Path, default=DEFAULT_SETTINGS, help="cluster settings YAML")
    parser.add_argument("--output", type=Path, default=COMPILED, help="compiled pipeline YAML")
    args = parser.parse_args()
    print(f"wrote {compile_study(load_settings(args.settings), args.output)}")


if __name__ == "__main__":
    main()
