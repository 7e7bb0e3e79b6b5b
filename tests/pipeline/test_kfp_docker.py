"""The pipeline's CPU stages run with KFP's DockerRunner, in the image their components name.

Each task is the study's own component (``components/``) started by KFP as a container
of the CPU image built from this tree, as the cluster would start it: plan, fetch,
publish of the source, prepare, the classic-anonymization fan-out (anonymize, publish,
ssim per method, over the list ``grid`` derives from the run's parameters), and export.
The run's workspace, a copy of coco-mini and a folder DVC remote live under the pipeline
root, the one folder the DockerRunner mounts. Every MLflow run the containers log carries
the lineage a cluster run carries: the image's revision and digest, the commit it was built
from, and the DVC hashes of the published data it read.

Not run here: train, finetune and the evaluations, relabel and report that need trained
models. They run in the training image (torch and Ultralytics: several GB and minutes
to build, beyond CI's budget); the SubprocessRunner test of the whole study covers them.
No ``from __future__ import annotations`` here: KFP reads the pipeline function's real annotations.
"""

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import kfp.local
import pytest
import yaml
from kfp import dsl
from mlflow.tracking import MlflowClient

from components.anonymize import anonymize
from components.export import export
from components.fetch import fetch
from components.images import BUILT_IMAGES, CPU_IMAGE, lineage
from components.plan import gather, grid, plan
from components.prepare import prepare
from components.publish import publish
from components.ssim import ssim
from tests.pipeline.conftest import DOCKER, REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow]
IMAGE_UID = 10001  # the images' user (docker/cpu/Dockerfile)


def cpu_stages() -> Callable[..., None]:
    """The study's CPU stages, wired as in pipelines/study.py, each task told its image (``lineage``).

    Defined when called, after the image is built: KFP runs a pipeline function's body (and so
    ``lineage``, which reads the digest docker/build.sh recorded) when it is decorated. Tasks take the
    ``workspace`` parameter ordered after ``plan``, as the study does: KFP 2.17's local runner hands a
    loop task its loop item in place of an upstream task's output.
    """

    @dsl.pipeline(name="anonbench-cpu-stages")
    def pipeline(workspace: str, overrides: list) -> None:
        branches = ["anonymize_classic", "finetune"]
        planned = lineage(
            plan(
                workspace=workspace,
                params_file="params.yaml",
                profile="mini",
                overrides=overrides,
                branches=branches,
            )
        )
        fetched = lineage(fetch(workspace=workspace, download=False).after(planned))
        sourced = lineage(publish(workspace=workspace, target="source").after(fetched))
        prepared = lineage(prepare(workspace=workspace).after(fetched))
        methods = lineage(grid(workspace=workspace, axis="anonymize_classic", shards=1).after(planned))
        with dsl.ParallelFor(methods.output) as method:
            anonymized = lineage(anonymize(workspace=workspace, method=method).after(prepared, sourced))
            published = lineage(publish(workspace=workspace, target=method).after(anonymized))
            measured = lineage(ssim(workspace=workspace, variant=method).after(published))
        joined = lineage(gather(refs=dsl.Collected(measured.outputs["Output"])))
        with dsl.ParallelFor(
            lineage(grid(workspace=workspace, axis="export", shards=1).after(planned)).output
        ) as variant:
            lineage(export(workspace=workspace, variant=variant).after(joined))

    return pipeline


def test_cpu_stages_run_in_the_image(cpu_image: str, coco_mini: Path, tmp_path: Path) -> None:
    # The components name CPU_IMAGE (resolved when they were imported); make it this build.
    subprocess.run([DOCKER, "tag", cpu_image, CPU_IMAGE], check=True)
    root = tmp_path / "kfp"
    shutil.copytree(coco_mini, root / "coco-mini")
    (root / "kfp-workspace").mkdir()
    # The tasks run as the image's non-root user: the mounted folders must be theirs.
    subprocess.run(["chown", "-R", f"{IMAGE_UID}:0", root], check=True)
    kfp.local.init(
        runner=kfp.local.DockerRunner(network_mode="none"),
        pipeline_root=str(root),
        workspace_root=str(root / "kfp-workspace"),
    )
    ws = root / "study"
    overrides = [
        f"data.local_copy={root / 'coco-mini'}",
        f"tracking.uri=sqlite:///{ws / 'mlflow.db'}",
        f"publish.remote={root / 'dvc-remote'}",
        # one classic method keeps the run short; the fan-out machinery is the same for three
        "anonymize.methods=[mask]",
        "train.variants=[org,mask]",
        "evaluate.variants=[org,mask]",
    ]
    cpu_stages()(workspace=str(ws), overrides=overrides)

    data = ws / "data"
    for rel in (
        "prepared/val2017/stats.json",
        "variants/mask/annotations/instances_val2017.json",
        "variants/mask/coverage_val2017.json",
        "ssim/mask/val2017_boxes.parquet",
        "ssim/mask/summary.json",
        "yolo/org/dataset.yaml",
        "yolo/mask/dataset.yaml",
    ):
        assert (data / rel).is_file(), rel
    assert len(list((data / "variants" / "mask" / "val2017").glob("*.png"))) == 50
    # Written inside the containers, by the image's user, not by this (root) process.
    assert (data / "ssim" / "mask" / "summary.json").stat().st_uid == IMAGE_UID

    # The stages' MLflow runs, in the store the containers wrote.
    client = MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("anonbench-mini")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert {(run.data.tags["stage"], run.info.status) for run in runs} >= {
        ("anonymize", "FINISHED"),
        ("publish", "FINISHED"),
        ("ssim", "FINISHED"),
    }

    # Lineage, from the image (its revision label, baked in as environment), the compiled pipeline
    # (the image reference and digest build.sh recorded) and the workspace (published DVC hashes).
    inspect = [DOCKER, "image", "inspect", "--format"]
    labels = '{{index .Config.Labels "org.opencontainers.image.revision"}}'
    revision = subprocess.run([*inspect, labels, cpu_image], capture_output=True, text=True).stdout.strip()
    image_id = subprocess.run([*inspect, "{{.Id}}", cpu_image], capture_output=True, text=True).stdout.strip()
    assert f"ANONBENCH_CPU_IMAGE_DIGEST={image_id}" in BUILT_IMAGES.read_text().splitlines()
    short_sha = revision.split("-")[1]  # <version>-<git short sha>[-dirty.<hash>], docker/build.sh
    commit = subprocess.run(["git", "rev-parse", short_sha], cwd=REPO, capture_output=True, text=True).stdout.strip()
    source = yaml.safe_load((ws / "data/raw/coco-mini.dvc").read_text())["outs"][0]["md5"]
    variant = yaml.safe_load((ws / "data/variants/mask.dvc").read_text())["outs"][0]["md5"]
    for run in runs:
        tags = run.data.tags
        assert tags["image"] == CPU_IMAGE and tags["image_digest"] == image_id, tags["stage"]
        assert tags["image_revision"] == revision and revision.startswith("0."), tags["stage"]
        assert tags["git_commit"] == commit, tags["stage"]
        # Every stage run read the source, but the variant's publish; the study run, made by the first
        # stage before anything was published, names no dataset.
        if tags["stage"] == "study":
            assert not any(key.startswith("dvc.") for key in tags), tags
        elif tags.get("target") != "mask":
            assert tags["dvc.data/raw/coco-mini"] == source, tags["stage"]
    (measured,) = [run for run in runs if run.data.tags["stage"] == "ssim"]
    assert measured.data.tags["dvc.data/variants/mask"] == variant
