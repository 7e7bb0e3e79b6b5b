"""The DeepPrivacy2 image: built from this tree, then DP2's real code path (untrained) run inside it.

docker/build.sh dp2 builds on the CPU image of the same tree, from the pinned source archives in
../shared/sources and, when ``make dp2-env`` has run, its detectron2 wheel (so CI compiles it once).
Inside the image, as its non-root user and with no network: anonymize with dp2_fullbody on a
coco-mini slice, then ssim and export on its output. Untrained generators (no checkpoint can be
had here) cost the same as trained ones; the weights the image would need are checked by name.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from anonbench.anonymizers.masks import changed_pixels
from anonbench.images import read_image
from tests.conftest import DP2_UNTRAINED_GT, PARAMS, coco_slice, config_under
from tests.pipeline.conftest import DOCKER, REPO, sh

pytestmark = [pytest.mark.docker, pytest.mark.slow]
# One to two persons an image (80x145 down to 3x3 px: two under DP2's size filter), two images without.
SLICE = {
    "train2017": ["000000000569.jpg", "000000000151.jpg", "000000000009.jpg", "000000000025.jpg"],
    "val2017": ["000000143931.jpg", "000000522713.jpg", "000000006818.jpg", "000000037777.jpg"],
}
SETTINGS = [
    "anonymize.methods=[blur,pixelate,mask,dp2_fullbody]",
    "anonymize.dp2.mode=gt",
    "anonymize.dp2.untrained=true",
]


@pytest.fixture(scope="session")
def dp2_image(cpu_image: str, docker_host: str) -> str:
    """The DP2 image built from this tree (layers cached between runs)."""
    built = sh(REPO / "docker" / "build.sh", "dp2", DOCKER_HOST=docker_host, BASE_IMAGE="local/debian:bookworm")
    # Each commit makes a new 7.5 GB image: those unused for a day go, as docker/ci_build_and_run.sh does for CPU ones.
    sh(DOCKER, "image", "prune", "-af", "--filter", "label=org.opencontainers.image.title=anonbench-dp2",
       "--filter", "until=24h", DOCKER_HOST=docker_host)  # fmt: skip
    return built.strip().splitlines()[-1]


def in_image(image: str, run: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """A command in the DP2 image as its own user, no network, in ``run`` (mounted)."""
    return subprocess.run(
        [
            DOCKER,
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            f"{run}:/workspace/run",
            "-w",
            "/workspace/run",
            image,
            *command,
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def anonbench(*args: str) -> list[str]:
    return ["anonbench", *args, "--params", "/workspace/params.yaml", *(a for s in SETTINGS for a in ("--set", s))]


def test_dp2_anonymize_then_ssim_and_export_in_the_image(dp2_image: str, coco_mini: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    coco = coco_slice(coco_mini, run / "data" / "raw" / "coco-mini", SLICE)  # as fetch would have left it
    for folder in (run, *(p for p in run.rglob("*") if p.is_dir())):
        folder.chmod(0o777)  # the image's user (10001) writes here
    for stage in (
        anonbench("anonymize", "--method", "dp2_fullbody"),
        anonbench("ssim", "--variant", "dp2_fullbody"),
        anonbench("export", "--variant", "dp2_fullbody"),
    ):
        proc = in_image(dp2_image, run, *stage)
        assert proc.returncode == 0, f"{' '.join(stage)}:\n{proc.stderr[-4000:]}"
    variant = run / "data" / "variants" / "dp2_fullbody"
    for split, names in SLICE.items():
        manifest = json.loads((variant / f"manifest_{split}.json").read_text())
        records = {r["key"]: r for r in manifest["records"]}
        assert sorted(records) == sorted(names) and manifest["counts"]["error"] == 0
        for name in names[2:]:  # without persons: copied, byte for byte
            assert (variant / split / name).read_bytes() == (coco / split / name).read_bytes()
        coverage = json.loads((variant / f"coverage_{split}.json").read_text())
        assert coverage["dp2"] == DP2_UNTRAINED_GT
        assert coverage["persons_anonymized"] >= 1
    assert json.loads((variant / "coverage_val2017.json").read_text())["persons_below_size_filter"] == 2
    assert (run / "data" / "ssim" / "dp2_fullbody" / "summary.json").is_file()
    assert (run / "data" / "yolo" / "dp2_fullbody" / "dataset.yaml").is_file()


def test_the_image_wants_weights_and_its_user_can_use_the_weights_folder(dp2_image: str, tmp_path: Path) -> None:
    probe = subprocess.run(
        [DOCKER, "run", "--rm", "--network", "none", dp2_image, "bash", "-c",
         'id -u; for d in "$ANONBENCH_DP2_WEIGHTS" "$TORCH_HOME" "$FVCORE_CACHE"; do test -w "$d" || echo "$d"; done'],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert probe.returncode == 0 and probe.stdout.split() == ["10001"], probe.stdout + probe.stderr
    (tmp_path / "empty").mkdir()
    tmp_path.chmod(0o755)
    proc = subprocess.run(
        [DOCKER, "run", "--rm", "--network", "none", "-v", f"{tmp_path / 'empty'}:/empty:ro", dp2_image,
         "anonbench", "dp2-weights", "--from", "/empty", "--params", "/workspace/params.yaml"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-3000:]
    for name in ("model_final_2d9806.pkl", "model_final_1d3314.pkl", "phi_smpl_27554_256.pkl"):
        assert name in errors[0]


def test_the_image_is_a_container_method_of_the_local_stage(dp2_image: str, coco_mini: Path, tmp_path: Path) -> None:
    """DP2's image behind the file contract: anonbench run-job --method dp2_fullbody, run by the host's anonymize stage
    with Docker (as root here, with the host's user), on the val slice: DP2's own size filter count, its pixels only
    inside the region it reports."""
    box = (
        f"anonymize.containers={{dp2_box: {{image: {dp2_image}, command: [anonbench, run-job, --method, dp2_fullbody], "
        "counts: [persons_below_size_filter], dilation_px: 0, min_person_px: 0, params: {mode: gt, untrained: true}}}"
    )
    overrides = [box, "anonymize.methods=[blur,pixelate,mask,dp2_box]"]
    cfg = config_under(tmp_path, coco_mini, *overrides, source=coco_slice(coco_mini, tmp_path / "coco", SLICE))
    sets = [f"paths.data={cfg.paths.data}", f"tracking.uri={cfg.tracking.uri}", *overrides]
    sh(REPO / ".venv" / "bin" / "anonbench", "anonymize", "--method", "dp2_box", "--split", "val2017",
       "--params", PARAMS, *(a for s in sets for a in ("--set", s)))  # fmt: skip
    variant = cfg.variant_root("dp2_box")
    coverage = json.loads((variant / "coverage_val2017.json").read_text())
    # 522713's two persons are under DP2's size filter: none anonymized, a skipped image, as for the built-in.
    assert coverage["status"] == {"ok": 3, "skipped": 1, "error": 0} and coverage["persons_below_size_filter"] == 2
    painted = read_image(variant / "masks" / "val2017" / "000000143931.png")[..., 0] > 0
    original = read_image(cfg.image_dir("org", "val2017") / "000000143931.jpg")
    out = read_image(variant / "val2017" / "000000143931.png")
    assert painted.any() and (changed_pixels(original, out) == painted).all()
    assert not (variant / "masks" / "val2017" / "000000522713.png").exists()  # under the filter: unchanged
    assert not (variant / "jobs").exists()
