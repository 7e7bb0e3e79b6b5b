"""The example container method in its own image: run by the local anonymize stage and by KFP's DockerRunner.

examples/anonbench-container-shuffle is built on the locally made Debian base (Debian's Python 3,
NumPy and Pillow; nothing of anonbench). The local stage (``anonbench anonymize --method shuffle``)
writes the job and runs the image with Docker; the pipeline runs the study's own tasks as a cluster
would: plan, fetch, prepare, prepare-job (CPU image), the method's image on the job, anonymize (CPU
image). Both variants are byte-identical, file for file (but the resume records and wall-clock
timings). No ``from __future__ import annotations`` here: KFP reads the pipeline function's real
annotations.
"""

import shutil
import subprocess
from pathlib import Path

import kfp.local
import pytest
from kfp import dsl

from anonbench.config import load_config
from anonbench.workspace import needed_branches
from components.anonymize import anonymize
from components.container_method import container_task, prepare_job
from components.fetch import fetch
from components.images import CPU_IMAGE
from components.plan import plan
from components.prepare import prepare
from tests.conftest import PARAMS, config_under, variant_digests
from tests.pipeline.conftest import DOCKER, REPO, sh

pytestmark = [pytest.mark.docker, pytest.mark.slow]
IMAGE_UID = 10001  # the user of the CPU image and of the example's image
EXAMPLE = REPO / "examples" / "anonbench-container-shuffle"
SHUFFLE_IMAGE = "anonbench-shuffle:test"
METHOD = [
    f"anonymize.containers={{shuffle: {{image: {SHUFFLE_IMAGE}, command: [python3, /opt/shuffle/shuffle.py], "
    "counts: [persons_shuffled], params: {passes: 2}}}",
    "anonymize.methods=[shuffle]",
    "train.variants=[org,shuffle]",
    "evaluate.variants=[org,shuffle]",
    "finetune.variant=shuffle",
]


@pytest.fixture(scope="module")
def shuffle_image(docker_host: str) -> str:
    """The example's image, built from its folder on the Debian base the CPU image uses."""
    base = sh(REPO / "docker" / "debian_base.sh", "local/debian:bookworm", DOCKER_HOST=docker_host).strip()
    sh(DOCKER, "build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}", "-t", SHUFFLE_IMAGE, EXAMPLE,
       DOCKER_HOST=docker_host)  # fmt: skip
    return SHUFFLE_IMAGE


def test_the_local_stage_and_kfp_run_the_image_to_the_same_variant(
    shuffle_image: str, cpu_image: str, coco_mini: Path, tmp_path: Path
) -> None:
    local = config_under(tmp_path / "local", coco_mini, *METHOD)
    sh(REPO / ".venv" / "bin" / "anonbench", "anonymize", "--method", "shuffle", "--params", PARAMS,
       *(arg for pair in [f"paths.data={local.paths.data}", f"tracking.uri={local.tracking.uri}", *METHOD]
         for arg in ("--set", pair)))  # fmt: skip
    on_host = variant_digests(local.variant_root("shuffle"))
    assert not (local.variant_root("shuffle") / "jobs").exists()
    coverage = (local.variant_root("shuffle") / "coverage_val2017.json").read_text()
    assert '"persons_shuffled"' in coverage

    subprocess.run([DOCKER, "tag", cpu_image, CPU_IMAGE], check=True)
    root = tmp_path / "kfp"
    shutil.copytree(coco_mini, root / "coco-mini")
    (root / "kfp-workspace").mkdir()
    subprocess.run(["chown", "-R", f"{IMAGE_UID}:0", root], check=True)  # the tasks' user owns the mounts
    kfp.local.init(
        runner=kfp.local.DockerRunner(network_mode="none"),
        pipeline_root=str(root),
        workspace_root=str(root / "kfp-workspace"),
    )
    ws = root / "study"
    overrides = [f"data.local_copy={root / 'coco-mini'}", f"tracking.uri=sqlite:///{ws / 'mlflow.db'}", *METHOD]
    cfg = load_config(PARAMS, None, overrides)
    (definition,) = cfg.anonymize.containers.values()
    branches = needed_branches(cfg)
    assert branches == ["finetune", "container:shuffle"]

    @dsl.pipeline(name="anonbench-container-method")
    def pipeline(workspace: str, overrides: list) -> None:
        run = {"workspace": workspace, "params_file": "params.yaml", "profile": "mini", "overrides": overrides}
        planned = plan(**run, branches=branches)
        fetched = fetch(workspace=workspace, download=False).after(planned)
        prepared = prepare(workspace=workspace).after(fetched)
        job = prepare_job(workspace=workspace, method="shuffle").after(prepared)
        ran = container_task("shuffle", definition)(job=job.output)
        anonymize(workspace=workspace, method="shuffle").after(ran)

    pipeline(workspace=str(ws), overrides=overrides)
    variant = ws / "data" / "variants" / "shuffle"
    in_kfp = variant_digests(variant)
    assert in_kfp == on_host
    assert (variant / "val2017").stat().st_uid == IMAGE_UID  # written by the tasks, not by this root process
    assert not (variant / "jobs").exists()
