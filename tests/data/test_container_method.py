"""Container methods' file contract on real coco-mini images, with the job done outside Docker.

Docker is not needed to check the contract: the stage writes the job (``--prepare-job``), the job is
done by the code a container would run (``anonbench run-job``'s function, or the example's script with
this environment's Python, NumPy and Pillow), and the stage reads it. tests/pipeline/
test_container_docker.py runs the same jobs in their images, locally and in KFP.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from anonbench.anonymizers import container
from anonbench.anonymizers.masks import changed_pixels
from anonbench.cli import app
from anonbench.config import Config
from anonbench.images import encode_image, read_image
from anonbench.stages import anonymize
from tests.conftest import REPO, variant_digests

VAL = "val2017"
SHUFFLE = REPO / "examples" / "anonbench-container-shuffle" / "shuffle.py"
# The example's definition as a user writes it in params.yaml (the image is never started here).
SHUFFLE_METHOD = (
    "anonymize.containers={shuffle: {image: anonbench-shuffle:test, command: [python3, /opt/shuffle/shuffle.py], "
    "counts: [persons_shuffled], params: {passes: 2}}}"
)
BLURBOX_METHOD = (
    "anonymize.containers={blurbox: {image: anonbench-cpu:test, command: [anonbench, run-job, --method, blur]}}"
)


@pytest.fixture
def with_containers(make_config: Callable[..., Config], tiny_coco: Path) -> Callable[..., Config]:
    """A config on the tiny slice with the example container methods named in ``anonymize.methods``."""

    def _make(*overrides: str) -> Config:
        methods = "anonymize.methods=[blur,pixelate,mask,shuffle,blurbox]"
        return make_config(SHUFFLE_METHOD, BLURBOX_METHOD, methods, "workers=1", *overrides, source=tiny_coco)

    return _make


def shuffle_outside_docker(job: Path) -> None:
    """What the example's image runs, with this environment's Python."""
    subprocess.run([sys.executable, SHUFFLE, job], check=True)


def test_a_container_serving_blur_writes_what_the_blur_plugin_writes(with_containers: Callable[..., Config]) -> None:
    """anonbench's own image as a container method (run-job --method blur) equals blur in process, file for file."""
    cfg = with_containers()
    [job] = anonymize.run(cfg, "blurbox", [VAL], prepare_only=True)
    request = json.loads((job / "request.json").read_text())
    assert request["contract"] == container.CONTRACT and request["dilation_px"] == cfg.anonymize.dilation_px
    assert not container.finished(job)
    served = CliRunner().invoke(app, ["run-job", str(job), "--method", "blur"])  # the image's command
    assert served.exit_code == 0 and f"{len(request['images'])} images ok, 0 failed" in served.output
    anonymize.run(cfg, "blurbox", [VAL])  # the job is done: read, no Docker
    anonymize.run(cfg, "blur", [VAL])
    assert not job.exists()  # its records hold what it wrote
    mine, theirs = variant_digests(cfg.variant_root("blurbox")), variant_digests(cfg.variant_root("blur"))
    differ = {name for name in mine if mine[name] != theirs.get(name)}
    assert differ == {f"coverage_{VAL}.json"}  # the method's name, only
    coverage = json.loads((cfg.variant_root("blurbox") / f"coverage_{VAL}.json").read_text())
    assert coverage | {"method": "blur"} == json.loads((cfg.variant_root("blur") / f"coverage_{VAL}.json").read_text())


def test_anonbench_methods_lists_the_container_methods_params_define() -> None:
    listed = CliRunner().invoke(app, ["methods", "--set", SHUFFLE_METHOD, "--set", BLURBOX_METHOD])
    assert listed.exit_code == 0, listed.output
    assert "shuffle\tcontainer anonbench-shuffle:test\tdeterministic=true gpu=false\t" in listed.output
    assert "blurbox\tcontainer anonbench-cpu:test\t" in listed.output


def test_the_example_shuffle_method_permutes_each_persons_pixels(with_containers: Callable[..., Config]) -> None:
    """Outside the persons nothing changes; inside, the pixels are the original's, moved; counts are summed."""
    cfg = with_containers()
    [job] = anonymize.run(cfg, "shuffle", [VAL], prepare_only=True)
    shuffle_outside_docker(job)
    anonymize.run(cfg, "shuffle", [VAL])
    root = cfg.variant_root("shuffle")
    manifest = json.loads((root / f"manifest_{VAL}.json").read_text())
    coverage = json.loads((root / f"coverage_{VAL}.json").read_text())
    assert coverage["persons_shuffled"] == coverage["persons_anonymized"] > 0
    for record in manifest["records"]:
        original = read_image(cfg.image_dir("org", VAL) / record["key"])
        out = read_image(cfg.image_dir("shuffle", VAL) / f"{Path(record['key']).stem}.png")
        region_file = root / "masks" / VAL / f"{Path(record['key']).stem}.png"
        region = read_image(region_file)[..., 0] > 0 if region_file.exists() else np.zeros(out.shape[:2], bool)
        assert not changed_pixels(original, out)[~region].any()
        assert record["details"]["anonymized_pixels"] == np.count_nonzero(region)
        inside = np.sort(original[region].view(np.dtype((np.void, 3))), axis=None)
        assert (inside == np.sort(out[region].view(np.dtype((np.void, 3))), axis=None)).all()
        if region.any():
            assert changed_pixels(original, out)[region].any()
    reference = variant_digests(root)
    anonymize.run(cfg, "shuffle", [VAL])  # nothing to do: no job, the same files
    assert variant_digests(root) == reference and not (root / "jobs").exists()
    # A resubmitted KFP run: the job task still gets a job (with no image), its image does nothing, the read
    # leaves the variant as it was and removes the job.
    [job] = anonymize.run(cfg, "shuffle", [VAL], prepare_only=True)
    assert json.loads((job / "request.json").read_text())["images"] == []
    shuffle_outside_docker(job)
    anonymize.run(cfg, "shuffle", [VAL])
    assert variant_digests(root) == reference and not (root / "jobs").exists()


def test_changed_container_params_start_the_variant_afresh(with_containers: Callable[..., Config]) -> None:
    cfg = with_containers()
    [job] = anonymize.run(cfg, "shuffle", [VAL], prepare_only=True)
    with_persons = len(json.loads((job / "request.json").read_text())["images"])
    shuffle_outside_docker(job)
    anonymize.run(cfg, "shuffle", [VAL])
    once = variant_digests(cfg.variant_root("shuffle"))
    changed = with_containers(SHUFFLE_METHOD.replace("passes: 2", "passes: 1"))
    [job] = anonymize.run(changed, "shuffle", [VAL], prepare_only=True)
    request = json.loads((job / "request.json").read_text())
    assert request["params"] == {"passes": 1} and len(request["images"]) == with_persons  # every one again
    shuffle_outside_docker(job)
    anonymize.run(changed, "shuffle", [VAL])
    again = variant_digests(cfg.variant_root("shuffle"))
    assert again.keys() == once.keys() and again != once


def done_shuffle_job(cfg: Config) -> tuple[Path, str, dict]:
    """The shuffle job of the val split, done; its folder, the first requested image id and its manifest."""
    [job] = anonymize.run(cfg, "shuffle", [VAL], prepare_only=True)
    shuffle_outside_docker(job)
    first = str(json.loads((job / "request.json").read_text())["images"][0]["id"])
    return job, first, json.loads((job / "output" / "manifest.json").read_text())


def test_without_docker_the_stage_says_so(
    with_containers: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = with_containers()
    [job] = anonymize.run(cfg, "shuffle", [VAL], prepare_only=True)
    monkeypatch.delenv("DOCKER", raising=False)
    monkeypatch.setenv("PATH", str(job))  # a PATH without docker
    with pytest.raises(container.ContainerError, match=r"anonbench-shuffle:test: needs Docker; no docker on PATH"):
        anonymize.run(cfg, "shuffle", [VAL])


def test_a_manifest_without_an_image_is_named(with_containers: Callable[..., Config]) -> None:
    cfg = with_containers()
    job, first, manifest = done_shuffle_job(cfg)
    del manifest["images"][first]
    (job / "output" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(container.ContainerError, match=rf"output/manifest.json: no entry for image ids \['{first}'\]"):
        anonymize.run(cfg, "shuffle", [VAL])


def test_an_image_the_method_failed_on_stops_strict_and_is_recorded_by_skip(
    with_containers: Callable[..., Config],
) -> None:
    cfg = with_containers()
    job, first, manifest = done_shuffle_job(cfg)
    manifest["images"][first] = {"status": "error", "reason": "out of memory", "counts": {}}
    (job / "output" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        anonymize.AnonymizeError, match=rf"image id {first} .*container method 'shuffle': out of memory"
    ):
        anonymize.run(cfg, "shuffle", [VAL])
    skipping = with_containers("policy=skip")
    anonymize.run(skipping, "shuffle", [VAL])  # the same request: the job is not run again
    records = json.loads((skipping.variant_root("shuffle") / f"manifest_{VAL}.json").read_text())["records"]
    [failed] = [r for r in records if r["status"] == "error"]
    assert failed["reason"] == f"{failed['key']}: container method 'shuffle': out of memory"


def test_an_image_of_the_wrong_size_is_named(with_containers: Callable[..., Config]) -> None:
    cfg = with_containers()
    job, first, _ = done_shuffle_job(cfg)
    (job / "output" / f"{first}.png").write_bytes(encode_image(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(container.ContainerError, match=rf"{first}.png: 4x4, the original is"):
        anonymize.run(cfg, "shuffle", [VAL])
