"""DeepPrivacy2's checkpoints: which files a setting needs, where DP2 looks for them, laying them out.

DP2 downloads its weights at first use, into two caches:

- ``TORCH_HOME/hub/checkpoints/<file name of the URL>``: the generators (through tops, which
  checks the md5 sum each generator config carries), the CSE DensePose model and its three
  detectron2 configs, the DSFD face detector (through torch.hub);
- ``FVCORE_CACHE/<path of the URL>``: detectron2's iopath cache, Mask R-CNN and the DensePose
  vertex embedding. iopath needs that folder writable (it locks beside each file and falls back
  to a temporary folder, and so to a download, when it cannot).

This module reads the file list from DP2's own configs and modules (nothing of DP2's is
restated here), checks a folder of checkpoints by those md5 sums, and lays the files out under
one weights folder (``torch/`` and ``fvcore/``) readable by every user and, for iopath,
group-writable (the images' runtime user is in group 0). The three CSE configs are laid out from
the pinned detectron2 tree. Nothing is downloaded unless asked for (:func:`download`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import yaml

# Anonymizer arguments that name a generator config (DP2's Anonymizer).
GENERATOR_KEYS = ("cse_person_G_cfg", "person_G_cfg", "face_G_cfg", "car_G_cfg")
MANIFEST = "dp2-weights.json"
DIR_MODE = 0o2775  # group-writable for iopath's lock files, group kept for new files
FILE_MODE = 0o664


class WeightsError(ValueError):
    """A checkpoint is missing, corrupt or unreadable; the message names each file."""


@dataclass(frozen=True)
class WeightFile:
    """One file DP2 loads, where it must lie, and how it is checked."""

    path: str
    """Relative to the weights folder: ``torch/hub/checkpoints/...`` or ``fvcore/...``."""
    url: str
    """Where DP2 would download it from."""
    md5: str | None
    """The md5 sum DP2's config gives (generators); None where DP2 publishes none."""
    what: str
    """What it is, for messages."""
    bundled: Path | None = None
    """A copy in the pinned source trees (laid out from there, not from the user's folder)."""

    @property
    def name(self) -> str:
        """The file name DP2 saves it under (the URL's last part)."""
        return PurePosixPath(self.path).name


def torch_hub_path(url: str) -> str:
    """Where tops and torch.hub cache ``url``: ``torch/hub/checkpoints/<file name>``."""
    return f"torch/hub/checkpoints/{PurePosixPath(urlparse(url).path).name}"


def iopath_path(url: str) -> str:
    """Where detectron2's iopath caches ``url``: ``fvcore/<URL path>``."""
    return f"fvcore/{urlparse(url).path.lstrip('/')}"


def _defaults(cls: Any, overrides: Any) -> dict[str, Any]:
    """A DP2 class's constructor defaults with a config's arguments on top."""
    params = inspect.signature(cls.__init__).parameters
    merged = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    return {**merged, **dict(overrides or {})}


def _generator_files(repo: Path, config: str) -> list[WeightFile]:
    from tops.config import LazyConfig

    common = LazyConfig.load(str(repo / config)).common
    url = common.get("model_url")
    if url is None:
        return []
    return [WeightFile(torch_hub_path(url), url, common.get("model_md5sum"), f"generator of {config}")]


def _cse_files(repo: Path, cse_cfg: Any) -> list[WeightFile]:
    from dp2.detection.models import cse

    args = _defaults(cse.CSEDetector, cse_cfg)
    configs = repo.parent / "detectron2" / "projects" / "DensePose" / "configs" / "cse"
    files = [
        WeightFile(torch_hub_path(url), url, None, "CSE DensePose config", configs / PurePosixPath(url).name)
        for url in args["cfg_2_download"]
    ]
    model = cse.model_urls[args["cfg_url"]]
    files.append(WeightFile(torch_hub_path(model), model, None, "CSE DensePose model"))
    for file in files[:-1]:
        text = file.bundled.read_text() if file.bundled is not None and file.bundled.is_file() else ""
        head = (yaml.safe_load(text) or {}).get("MODEL", {}).get("ROI_DENSEPOSE_HEAD", {})
        embedders = head.get("CSE", {}).get("EMBEDDERS", {})
        for name, embedder in embedders.items():
            url = embedder["INIT_FILE"]
            files.append(WeightFile(iopath_path(url), url, None, f"DensePose vertex embedding {name}"))
    return files


def _detector_files(repo: Path, detector: Any) -> list[WeightFile]:
    files: list[WeightFile] = []
    cls = detector["_target_"]
    params = inspect.signature(cls.__init__).parameters
    if "mask_rcnn_cfg" in params:
        from dp2.detection.models import mask_rcnn

        args = _defaults(mask_rcnn.MaskRCNNDetector, detector.get("mask_rcnn_cfg"))
        url = mask_rcnn.model_urls[args["cfg_name"]]
        files.append(WeightFile(iopath_path(url), url, None, "Mask R-CNN"))
    if "cse_cfg" in params:
        files += _cse_files(repo, detector.get("cse_cfg"))
    if "face_detector_cfg" in params:
        from face_detection.dsfd import detect

        files.append(WeightFile(torch_hub_path(detect.model_url), detect.model_url, None, "DSFD face detector"))
    return files


def required(repo: Path, config: str, generators: bool = True) -> list[WeightFile]:
    """Every file DP2 loads for one of its configs, read from that config and DP2's modules.

    Args:
        repo: DP2's source tree (the pinned detectron2 tree lies beside it).
        config: An anonymizer config (detector and generators) or a generator config, relative to ``repo``.
        generators: Include the generators' checkpoints (false for untrained generators or the detector alone).

    Returns:
        The files, detector ones first.
    """
    from tops.config import LazyConfig

    cfg = LazyConfig.load(str(repo / config))
    files: list[WeightFile] = []
    if "anonymizer" in cfg:
        if "detector" in cfg:
            files += _detector_files(repo, cfg.detector)
        if generators:
            for key in GENERATOR_KEYS:
                if cfg.anonymizer.get(key) is not None:
                    files += _generator_files(repo, cfg.anonymizer[key])
    elif generators:
        files += _generator_files(repo, config)
    return files


def md5sum(path: Path) -> str:
    """md5 of a file, read in chunks (checkpoints are hundreds of MB)."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_present(files: Iterable[WeightFile], weights: Path) -> None:
    """Fail at once, naming each missing file and where it belongs, instead of letting DP2 download.

    Raises:
        WeightsError: One line listing the missing files.
    """
    missing = [f for f in files if not (weights / f.path).is_file()]
    if missing:
        listed = "; ".join(f"{weights / f.path} ({f.what}, {f.url})" for f in missing)
        raise WeightsError(
            f"DeepPrivacy2 weights missing: {listed}. Put DP2's checkpoint files in one folder and run "
            f"`anonbench dp2-weights --from FOLDER` (docs/anonymize.md), or check the plumbing with "
            "anonymize.dp2.untrained=true"
        )


def _install(source: Path, target: Path) -> None:
    """Copy a file into place (atomically) with modes every user can read."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    tmp.chmod(FILE_MODE)
    tmp.replace(target)


def _open_dirs(weights: Path) -> None:
    """Directories readable by all and writable by the group (iopath locks beside each file)."""
    for folder in (weights, *(p for p in weights.rglob("*") if p.is_dir())):
        folder.chmod(DIR_MODE)


def _check(file: WeightFile, path: Path) -> str:
    """Refuse a file whose md5 differs from DP2's; return its md5."""
    digest = md5sum(path)
    if file.md5 is not None and digest != file.md5:
        raise WeightsError(f"{path}: md5 {digest}, DP2's config expects {file.md5} for the {file.what}: refused")
    return digest


def lay_out(files: Iterable[WeightFile], source: Path, weights: Path) -> list[Path]:
    """Check DP2's checkpoints in ``source`` and put each where DP2 looks for it under ``weights``.

    A file is found in ``source`` (searched recursively, so a copy of an earlier cache works) by the
    name DP2 saves it under; the CSE configs come from the pinned detectron2 tree.

    Returns:
        The files written, and the manifest ``dp2-weights.json`` (file, md5, whether DP2 publishes it).

    Raises:
        WeightsError: Naming each missing file, or the first whose md5 is not DP2's.
    """
    if not source.is_dir():
        raise WeightsError(f"--from {source}: not a folder")
    files = list(dict.fromkeys(files))
    by_name: dict[str, list[Path]] = {}
    for path in sorted(source.rglob("*")):
        if path.is_file():
            by_name.setdefault(path.name, []).append(path)
    found: dict[WeightFile, Path] = {}
    for file in files:
        candidates = [file.bundled] if file.bundled is not None and file.bundled.is_file() else by_name.get(file.name)
        if candidates:
            found[file] = candidates[0]
    missing = [f for f in files if f not in found]
    if missing:
        raise WeightsError(f"--from {source}: missing " + "; ".join(f"{f.name} ({f.what}, {f.url})" for f in missing))
    written, manifest = [], []
    for file, path in found.items():
        digest = _check(file, path)
        _install(path, weights / file.path)
        written.append(weights / file.path)
        manifest.append({"path": file.path, "md5": digest, "md5_from_dp2": file.md5 is not None, "url": file.url})
    (weights / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (weights / MANIFEST).chmod(FILE_MODE)
    _open_dirs(weights)
    return [*written, weights / MANIFEST]


def download(files: Iterable[WeightFile], weights: Path) -> list[Path]:
    """Download each missing file from DP2's URL, check its md5, put it in place (only when asked).

    Returns:
        The files downloaded.

    Raises:
        WeightsError: For a download that fails or a file whose md5 is not DP2's.
    """
    fetched = []
    for file in files:
        target = weights / file.path
        if target.is_file():
            continue
        if file.bundled is not None and file.bundled.is_file():
            _install(file.bundled, target)
            continue
        tmp = target.with_name(f".{target.name}.download")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(file.url, timeout=60) as response, tmp.open("wb") as out:
                shutil.copyfileobj(response, out)
            _check(file, tmp)
        except OSError as exc:
            raise WeightsError(f"cannot download the {file.what} from {file.url} ({exc})") from None
        except WeightsError:
            tmp.unlink()
            raise
        tmp.chmod(FILE_MODE)
        tmp.replace(target)
        fetched.append(target)
    _open_dirs(weights)
    return fetched


def environment(weights: Path) -> dict[str, str]:
    """The variables that point DP2 (and detectron2) at a weights folder laid out here."""
    return {"TORCH_HOME": str(weights / "torch"), "FVCORE_CACHE": str(weights / "fvcore")}
