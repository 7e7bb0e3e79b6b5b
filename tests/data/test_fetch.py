"""fetch: a verified copy from the local folder, or a real HTTP download with checksums and resume.

The download tests serve a copy of coco-mini from an HTTP server on 127.0.0.1
(with Range support, as the public hosts have); ``data.mirrors`` points every
public base URL at it, so nothing leaves this machine.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from anonbench.cli import app
from anonbench.config import Config
from anonbench.data.download import download, file_digest
from anonbench.data.sources import COCO128_BASE, COCO_IMAGES_BASE, TINY_COCO_BASE, coco_mini_files
from anonbench.stages import fetch
from anonbench.stages.fetch import FetchError
from tests.conftest import PARAMS, renumber_folder


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with single ``bytes=N-`` ranges; every request's Range header is recorded."""

    requests: ClassVar[list[tuple[str, str]]] = []

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        self.requests.append((self.path, self.headers.get("Range", "")))
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if not match or not path.is_file():
            return super().send_head()
        start, size = int(match.group(1)), path.stat().st_size
        if start >= size:
            self.send_error(416)
            return None
        handle = path.open("rb")
        handle.seek(start)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        return handle


@pytest.fixture
def served(coco_mini: Path, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A writable copy of coco-mini behind http://127.0.0.1:<port>/."""
    root = tmp_path / "served"
    shutil.copytree(coco_mini, root)
    RangeHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _no_local_copy_in_environment(monkeypatch: pytest.MonkeyPatch, coco_mini: Path) -> None:
    """make test exports ANONBENCH_COCO_MINI; these tests choose their source explicitly."""
    monkeypatch.delenv("ANONBENCH_COCO_MINI", raising=False)


def _download_config(make_config: Callable[..., Config], base: str) -> Config:
    mirrors = (
        f"data.mirrors={{'{COCO128_BASE}': '{base}', '{TINY_COCO_BASE}': '{base}', '{COCO_IMAGES_BASE}': '{base}'}}"
    )
    cfg = make_config(mirrors, "data.local_copy=null")
    cfg.source_root.unlink()  # the fixture's link stands for a finished fetch; start from nothing
    return cfg


def _same_tree(a: Path, b: Path) -> bool:
    files = [spec.path for spec in coco_mini_files()]
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_local_copy_is_verified_and_rerun_is_a_no_op(make_config: Callable[..., Config], coco_mini: Path) -> None:
    cfg = make_config()
    cfg.source_root.unlink()
    assert fetch.run(cfg) == [cfg.source_root]
    assert _same_tree(cfg.source_root, coco_mini)
    stamp = (cfg.source_root / fetch.STAMP).stat().st_mtime_ns
    fetch.run(cfg)
    assert (cfg.source_root / fetch.STAMP).stat().st_mtime_ns == stamp


def test_corrupt_local_copy_is_rejected_naming_the_file(
    make_config: Callable[..., Config], coco_mini: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(coco_mini, copy)
    victim = copy / "val2017" / "000000006818.jpg"
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    cfg = make_config(f"data.local_copy={copy}")
    cfg.source_root.unlink()
    with pytest.raises(
        FetchError, match=r"1 of 180 files failed:\n.*val2017/000000006818\.jpg: sha256 .* does not match"
    ):
        fetch.run(cfg)


def test_no_local_copy_and_no_download_says_what_to_do(make_config: Callable[..., Config]) -> None:
    cfg = make_config("data.local_copy=null")
    cfg.source_root.unlink()
    with pytest.raises(FetchError, match="ANONBENCH_COCO_MINI"):
        fetch.run(cfg)


def test_missing_local_copy_is_named_once(make_config: Callable[..., Config], tmp_path: Path) -> None:
    # What a container started without its data mount sees (ANONBENCH_COCO_MINI=/data/coco-mini).
    cfg = make_config(f"data.local_copy={tmp_path / 'not-mounted'}")
    cfg.source_root.unlink()
    with pytest.raises(
        FetchError, match=r"^coco-mini: the local copy .*not-mounted \(data.local_copy or ANONBENCH_COCO_MINI\)"
    ):
        fetch.run(cfg)


def test_download_over_http_gives_the_same_bytes(
    make_config: Callable[..., Config], served: tuple[Path, str], coco_mini: Path
) -> None:
    _, base = served
    cfg = _download_config(make_config, base)
    fetch.run(cfg, download=True)
    assert _same_tree(cfg.source_root, coco_mini)
    assert len(RangeHandler.requests) == len(coco_mini_files())


def test_corrupted_file_on_the_server_is_rejected_then_recovered(
    make_config: Callable[..., Config], served: tuple[Path, str], coco_mini: Path
) -> None:
    root, base = served
    victim = root / "train2017" / "000000000009.jpg"
    good = victim.read_bytes()
    victim.write_bytes(good[:-100] + bytes(100))
    cfg = _download_config(make_config, base)
    with pytest.raises(FetchError, match=r"train2017/000000000009\.jpg: no source gave the expected file"):
        fetch.run(cfg, download=True)
    assert not (cfg.source_root / "train2017" / "000000000009.jpg").exists()
    assert not (cfg.source_root / fetch.STAMP).exists()
    victim.write_bytes(good)
    RangeHandler.requests = []
    fetch.run(cfg, download=True)
    assert _same_tree(cfg.source_root, coco_mini)
    assert [path for path, _ in RangeHandler.requests] == ["/train2017/000000000009.jpg"]


def test_partial_download_resumes_with_a_range_request(served: tuple[Path, str], tmp_path: Path) -> None:
    root, base = served
    source = root / "val2017" / "000000006818.jpg"
    dest = tmp_path / "out" / "000000006818.jpg"
    dest.parent.mkdir()
    half = source.stat().st_size // 2
    (dest.parent / (dest.name + ".part")).write_bytes(source.read_bytes()[:half])
    download(base + "val2017/000000006818.jpg", dest, file_digest(source, "sha256"), "sha256")
    assert dest.read_bytes() == source.read_bytes()
    assert RangeHandler.requests == [("/val2017/000000006818.jpg", f"bytes={half}-")]


def test_cli_fetch_downloads_only_when_asked(make_config: Callable[..., Config], served: tuple[Path, str]) -> None:
    _, base = served
    cfg = _download_config(make_config, base)
    args = ["fetch", "--params", str(PARAMS), "--set", f"paths.data={cfg.paths.data}", "--set", "data.local_copy=null"]
    args += ["--set", f"data.mirrors={cfg.data.mirrors}"]
    runner = CliRunner()
    refused = runner.invoke(app, args, env={"ANONBENCH_COCO_MINI": ""})
    assert refused.exit_code != 0
    assert not RangeHandler.requests
    done = runner.invoke(app, [*args, "--download"], env={"ANONBENCH_COCO_MINI": ""})
    assert done.exit_code == 0, done.output
    assert f"wrote {cfg.source_root}" in done.output


def test_coco2017_archives_extract_into_the_coco_layout(tmp_path: Path) -> None:
    """The official archives' member layout (names as in train2017.zip etc.), with tiny stand-in contents."""
    import zipfile

    members = {
        "train2017.zip": {"train2017/000000000009.jpg": b"jpeg-a"},
        "val2017.zip": {"val2017/000000000139.jpg": b"jpeg-b"},
        "annotations_trainval2017.zip": {
            "annotations/instances_train2017.json": b"{}",
            "annotations/instances_val2017.json": b"{}",
            "annotations/captions_train2017.json": b"{}",
            "annotations/person_keypoints_val2017.json": b"{}",
        },
    }
    archives = []
    for name, files in members.items():
        archives.append(tmp_path / name)
        with zipfile.ZipFile(archives[-1], "w") as zipped:
            for member, data in files.items():
                zipped.writestr(member, data)
    target = tmp_path / "coco2017"
    fetch.extract_coco2017(archives, target, ("train2017", "val2017"))
    extracted = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert extracted == [
        "annotations/instances_train2017.json",
        "annotations/instances_val2017.json",
        "train2017/000000000009.jpg",
        "val2017/000000000139.jpg",
    ]
    assert (target / "val2017" / "000000000139.jpg").read_bytes() == b"jpeg-b"


def folder_config(make_config: Callable[..., Config], folder: Path | None) -> Config:
    cfg = make_config(
        "data.source=coco-folder",
        f"data.local_copy={folder}" if folder else "data.local_copy=null",
        "data.train_split=train",
        "data.val_split=val",
    )
    cfg.source_root.unlink()  # make_config links a source in; fetch is what is tested here
    return cfg


def test_a_coco_folder_is_copied_verified_and_kept_in_step(
    make_config: Callable[..., Config], tiny_coco: Path, tmp_path: Path
) -> None:
    folder = renumber_folder(tiny_coco, tmp_path / "mine", {"train2017": "train", "val2017": "val"})
    (folder / "README.txt").write_text("not part of the dataset")
    cfg = folder_config(make_config, folder)
    assert fetch.run(cfg) == [cfg.source_root]
    copied = sorted(str(p.relative_to(cfg.source_root)) for p in cfg.source_root.rglob("*") if p.is_file())
    listed = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "README.txt")
    assert copied == sorted([*listed, fetch.STAMP])
    assert all((cfg.source_root / f).read_bytes() == (folder / f).read_bytes() for f in listed)
    stamp = json.loads((cfg.source_root / fetch.STAMP).read_text())
    assert stamp["source"] == "coco-folder" and stamp["files"]["annotations/instances_val.json"].startswith("sha256:")

    before = (cfg.source_root / fetch.STAMP).stat().st_mtime_ns
    fetch.run(cfg)
    assert (cfg.source_root / fetch.STAMP).stat().st_mtime_ns == before, "unchanged folder: nothing to do"

    gone = sorted((folder / "val").iterdir())[0]
    gone.unlink()  # the user removes an image and edits the annotations
    (folder / "annotations" / "instances_val.json").write_text("{}")
    fetch.run(cfg)
    assert not (cfg.source_root / "val" / gone.name).exists()
    assert (cfg.source_root / "annotations" / "instances_val.json").read_text() == "{}"


def test_a_coco_folder_needs_its_folder_and_its_split_files(
    make_config: Callable[..., Config], tiny_coco: Path, tmp_path: Path
) -> None:
    with pytest.raises(FetchError, match=r"coco-folder: name your COCO-format folder with data\.local_copy or AN"):
        fetch.run(folder_config(make_config, None))
    folder = renumber_folder(tiny_coco, tmp_path / "mine", {"train2017": "train", "val2017": "valid"})
    with pytest.raises(FetchError, match=r"coco-folder: .*annotations/instances_val\.json: a COCO-format folder needs"):
        fetch.run(folder_config(make_config, folder))
