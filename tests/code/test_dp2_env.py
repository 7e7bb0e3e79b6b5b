"""The DeepPrivacy2 environment's definition, checked without it: pinned sources, pins, params, weights layout."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import jinja2
import markupsafe
import pytest

from anonbench.anonymizers import dp2_weights
from anonbench.anonymizers.dp2_weights import WeightFile, WeightsError
from anonbench.config import ConfigError, load_config
from tests.conftest import PARAMS, REPO

SOURCES_LIST = REPO / "requirements" / "dp2-sources.txt"


def load_script(name: str) -> ModuleType:
    """docker/dp2/<name>.py, a build script outside the package."""
    spec = importlib.util.spec_from_file_location(f"dp2_{name}", REPO / "docker" / "dp2" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shared_sources() -> Path:
    folder = REPO.parent / "shared" / "sources"
    if not (folder / "SHA256SUMS").is_file():
        pytest.fail(f"the pinned DP2 source archives are not at {folder} (../shared beside the checkout)")
    return folder


def test_the_pinned_archives_unpack_patched(shared_sources: Path, tmp_path: Path) -> None:
    sources = load_script("sources")
    pins = sources.read_list(SOURCES_LIST)
    assert {p.folder for p in pins} == {
        "deep_privacy2",
        "detectron2",
        "CLIP",
        "torch_ops",
        "DSFD-Pytorch-Inference",
        "motpy",
    }
    trees = sources.fetch(pins, tmp_path / "src", shared_sources)
    assert [t.name for t in trees] == [p.folder for p in pins]
    assert (tmp_path / "src" / "deep_privacy2" / "configs" / "anonymizers" / "FB_cse.py").is_file()
    transform = (tmp_path / "src" / "detectron2" / "detectron2" / "data" / "transforms" / "transform.py").read_text()
    assert "Image.LINEAR" not in transform and "interp=Image.BILINEAR" in transform
    for path in ("CLIP/setup.py", "CLIP/clip/clip.py", "detectron2/detectron2/model_zoo/model_zoo.py"):
        assert "pkg_resources" not in (tmp_path / "src" / path).read_text(), path
    # Unpacking again replaces the trees (a rerun of make dp2-env), patches applied once.
    sources.fetch(pins, tmp_path / "src", shared_sources)
    assert (tmp_path / "src" / "CLIP" / "clip" / "clip.py").read_text().count("import packaging.version") == 1


def fake_archive(path: Path, commit: str, top: str = "motpy") -> None:
    """A tar.gz with one file and ``commit`` in its pax header, as git archive writes it."""
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT, pax_headers={"comment": commit}) as tar:
        info = tarfile.TarInfo(f"{top}/README.md")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))


def test_a_missing_or_wrong_source_folder_is_one_line(shared_sources: Path, tmp_path: Path) -> None:
    script = [str(REPO / "docker" / "dp2" / "sources.py"), str(SOURCES_LIST), str(tmp_path / "out")]

    def run(folder: Path) -> tuple[int, str]:
        proc = subprocess.run(["python3", *script, "--from", str(folder)], capture_output=True, text=True, check=False)
        return proc.returncode, proc.stderr

    code, err = run(tmp_path / "nowhere")
    assert code == 2 and err == f"sources.py: DP2 source folder {tmp_path / 'nowhere'}: not a folder " \
        "(expected the archives of the pinned commits)\n"  # fmt: skip
    (tmp_path / "empty").mkdir()
    code, err = run(tmp_path / "empty")
    assert code == 2 and err.count("\n") == 1 and "deep_privacy2-f4d8f09d1eb8.tar.gz is missing" in err
    other = tmp_path / "other"
    other.mkdir()
    for archive in shared_sources.glob("*.tar.gz"):
        (other / archive.name).symlink_to(archive)
    (other / "motpy-c77f85d27e37.tar.gz").unlink()
    fake_archive(other / "motpy-c77f85d27e37.tar.gz", "1" * 40)
    code, err = run(other)
    assert code == 2 and err.count("\n") == 1
    assert f"motpy-c77f85d27e37.tar.gz: holds commit {'1' * 40}, the pin is c77f85d27e37" in err


def test_a_patch_that_no_longer_applies_stops_the_build(
    shared_sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = load_script("sources")
    stale = sources.Patch("motpy", "setup.py", "text that is not there", "x", why="a test")
    monkeypatch.setattr(sources, "PATCHES", (stale,))
    motpy = [p for p in sources.read_list(SOURCES_LIST) if p.folder == "motpy"]
    with pytest.raises(sources.SourceError, match=r"motpy/setup.py: the patch for 'a test' expects 1 match"):
        sources.fetch(motpy, tmp_path, shared_sources)


def test_an_archive_leaving_its_tree_is_refused(tmp_path: Path) -> None:
    sources = load_script("sources")
    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as tar:
        for name in ("motpy/ok.txt", "motpy/../../escape.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(sources.SourceError, match="would land outside the tree"):
        sources.unpack(tmp_path / "evil.tar.gz", tmp_path / "motpy")
    assert not (tmp_path.parent / "escape.txt").exists()


def test_install_sh_needs_a_source_folder_or_download() -> None:
    proc = subprocess.run(
        [REPO / "docker" / "dp2" / "install.sh", "python3", "/nonexistent"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "DP2_SOURCES": ""},
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "set DP2_SOURCES" in proc.stderr


def pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements or constraints file, names normalized."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if match:
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found


def test_the_dp2_environment_is_pinned_apart_from_and_consistent_with_anonbench() -> None:
    main = pins(REPO / "requirements" / "constraints.txt")
    dp2 = pins(REPO / "requirements" / "dp2-constraints.txt")
    assert not set(main) & set(dp2), "a package is pinned in both constraints files"
    requirements = [
        re.sub(r"[-_.]+", "-", re.split(r"[=<>!;\[ ]", line)[0]).lower()
        for line in (REPO / "requirements" / "dp2-requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    unpinned = [r for r in requirements if r not in main and r not in dp2]
    assert not unpinned, f"not pinned by either constraints file: {unpinned}"
    train = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    wanted = pins(REPO / "requirements" / "dp2-requirements.txt")
    assert {r.split("==")[0]: r.split("==")[1] for r in train if "==" in r} == {
        k: v for k, v in wanted.items() if k in ("torch", "torchvision")
    }  # one torch for training and DP2
    assert dp2["av"] == "18.1.0" and dp2["iopath"] == "0.1.9"  # av 19 has no Python 3.11 wheel; detectron2's bound


def test_dp2_params_modes_and_the_paper_profile() -> None:
    mini = load_config(PARAMS)
    assert (mini.anonymize.dp2.mode, mini.anonymize.dp2.device, mini.anonymize.dp2.untrained) == (
        "detector",
        "cpu",
        False,
    )
    paper = load_config(PARAMS, "paper")
    assert (paper.anonymize.dp2.device, paper.anonymize.dp2.amp) == ("cuda", True)
    with pytest.raises(ConfigError, match=r"anonymize.dp2: untrained: refused here \(allow_untrained is false"):
        load_config(PARAMS, "paper", ["anonymize.dp2.untrained=true"])
    forced = load_config(PARAMS, "paper", ["anonymize.dp2.untrained=true", "anonymize.dp2.allow_untrained=true"])
    assert forced.anonymize.dp2.untrained
    with pytest.raises(ConfigError, match=r"anonymize.dp2.mask_source: unknown key"):
        load_config(PARAMS, None, ["anonymize.dp2.mask_source=gt"])
    with pytest.raises(ConfigError, match=r"anonymize.dp2.mode"):
        load_config(PARAMS, None, ["anonymize.dp2.mode=triagan"])


def test_the_weights_folder_comes_from_params_env_or_the_user_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANONBENCH_DP2_WEIGHTS", "/mnt/dp2-weights")
    assert load_config(PARAMS).anonymize.dp2.weights == Path("/mnt/dp2-weights")
    assert load_config(PARAMS, None, ["anonymize.dp2.weights_dir=/w"]).anonymize.dp2.weights == Path("/w")
    relative = load_config(PARAMS, None, ["anonymize.dp2.weights_dir=w"]).anonymize.dp2.weights
    assert relative == Path.cwd() / "w"  # DP2 loads with its own tree as working directory
    monkeypatch.delenv("ANONBENCH_DP2_WEIGHTS")
    assert load_config(PARAMS).anonymize.dp2.weights == Path.home() / ".cache" / "anonbench" / "dp2-weights"


def weight(
    tmp_path: Path, name: str, content: bytes, where: str = "torch/hub/checkpoints", md5: bool = True
) -> WeightFile:
    return WeightFile(
        f"{where}/{name}",
        f"https://example.org/models/{name}",
        hashlib.md5(content).hexdigest() if md5 else None,
        f"test file {name}",
    )


def test_lay_out_checks_and_places_every_file(tmp_path: Path) -> None:
    source = tmp_path / "downloads" / "nested"
    source.mkdir(parents=True)
    (source / "gen.ckpt").write_bytes(b"generator")
    (source / "model.pkl").write_bytes(b"detector")
    bundle = tmp_path / "cse.yaml"
    bundle.write_text("MODEL: {}\n")
    files = [
        weight(tmp_path, "gen.ckpt", b"generator"),
        weight(tmp_path, "model.pkl", b"detector", where="fvcore/detectron2/x", md5=False),
        WeightFile("torch/hub/checkpoints/cse.yaml", "https://example.org/cse.yaml", None, "config", bundle),
    ]
    weights = tmp_path / "weights"
    written = dp2_weights.lay_out(files, tmp_path / "downloads", weights)
    assert (weights / "torch/hub/checkpoints/gen.ckpt").read_bytes() == b"generator"
    assert (weights / "fvcore/detectron2/x/model.pkl").read_bytes() == b"detector"
    assert (weights / "torch/hub/checkpoints/cse.yaml").read_text() == "MODEL: {}\n"
    assert written[-1] == weights / "dp2-weights.json"
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o664, path
    for folder in (weights, weights / "fvcore" / "detectron2" / "x"):
        assert folder.stat().st_mode & 0o7777 == 0o2775, folder  # iopath writes lock files beside its files
    assert dp2_weights.environment(weights) == {"TORCH_HOME": f"{weights}/torch", "FVCORE_CACHE": f"{weights}/fvcore"}
    dp2_weights.check_present(files, weights)


def test_lay_out_refuses_a_wrong_md5_and_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "gen.ckpt").write_bytes(b"tampered")
    files = [weight(tmp_path, "gen.ckpt", b"generator"), weight(tmp_path, "other.pkl", b"x")]
    with pytest.raises(WeightsError, match=r"--from .*src: missing other.pkl \(test file other.pkl, https://"):
        dp2_weights.lay_out(files, tmp_path / "src", tmp_path / "w")
    with pytest.raises(WeightsError, match=r"src/gen.ckpt: md5 [0-9a-f]{32}, DP2's config expects .* refused"):
        dp2_weights.lay_out(files[:1], tmp_path / "src", tmp_path / "w")
    assert not (tmp_path / "w" / files[0].path).exists()
    with pytest.raises(WeightsError) as missing:
        dp2_weights.check_present(files, tmp_path / "w")
    assert "\n" not in str(missing.value) and str(tmp_path / "w" / files[1].path) in str(missing.value)


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    """A local HTTP server over tmp_path/served (stands in for DP2's download hosts)."""
    (tmp_path / "served").mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    def handler(*args: object) -> Quiet:
        return Quiet(*args, directory=str(tmp_path / "served"))  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_only_when_asked_and_checked(tmp_path: Path, file_server: str) -> None:
    (tmp_path / "served" / "gen.ckpt").write_bytes(b"generator")
    good = WeightFile(
        "torch/hub/checkpoints/gen.ckpt", f"{file_server}/gen.ckpt", hashlib.md5(b"generator").hexdigest(), "g"
    )
    bad = WeightFile("torch/hub/checkpoints/bad.ckpt", f"{file_server}/gen.ckpt", "0" * 32, "generator b")
    gone = WeightFile("fvcore/x.pkl", f"{file_server}/x.pkl", None, "detector x")
    assert dp2_weights.download([good], tmp_path / "w") == [tmp_path / "w" / good.path]
    assert (tmp_path / "w" / good.path).read_bytes() == b"generator"
    with pytest.raises(WeightsError, match=r"expects 0{32} for the generator b: refused"):
        dp2_weights.download([bad], tmp_path / "w")
    assert not list((tmp_path / "w" / "torch/hub/checkpoints").glob("*bad*"))  # nothing half-written stays
    with pytest.raises(WeightsError, match=r"cannot download the detector x from http://127.0.0.1:\d+/x.pkl"):
        dp2_weights.download([gone], tmp_path / "w")


def test_seed_venv_links_a_package_and_what_it_requires_into_a_fresh_environment(tmp_path: Path) -> None:
    """jinja2 requires markupsafe: both arrive as hard links to this environment's files and import there."""
    seed_venv = load_script("seed_venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", tmp_path / "env"], check=True)
    target = str(tmp_path / "env" / "bin" / "python")
    assert seed_venv.seed(target, ["jinja2"]) > 0
    code = "import jinja2, markupsafe; print(jinja2.__file__); print(markupsafe.__file__)"
    paths = subprocess.run([target, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    for linked, here in zip(paths, (jinja2.__file__, markupsafe.__file__), strict=True):
        assert linked.startswith(str(tmp_path)) and os.path.samefile(linked, here)
    assert seed_venv.seed(target, ["jinja2"]) == 0  # both are now installed there: nothing to link


def test_link_wheels_links_what_pip_would_install_from_a_local_folder(tmp_path: Path) -> None:
    """The example plugin's wheel in a find-links folder: pip's dry run picks it, and it is linked, not copied."""
    link_wheels = load_script("link_wheels")
    found, project = tmp_path / "found", tmp_path / "plugin"
    shutil.copytree(REPO / "examples" / "anonbench-plugin-inpaint", project)  # setuptools builds in the tree
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            found,
            project,
        ],
        check=True,
    )
    arguments = ["--no-index", "--find-links", str(found), "--no-deps", "anonbench-plugin-inpaint"]
    wheels = link_wheels.local_wheels(arguments)
    assert [wheel.parent for wheel in wheels] == [found]
    assert link_wheels.link_into(tmp_path / "inputs", wheels) == 1
    assert os.path.samefile(tmp_path / "inputs" / wheels[0].name, wheels[0])
    assert link_wheels.link_into(tmp_path / "inputs", wheels) == 0
