"""The publish stage: version a dataset a KFP workspace made with DVC, push it, leave a pointer to it.

Runs in a study workspace (``anonbench.workspace``), never in the repository, whose
``dvc.yaml`` already versions the same outputs (there: ``dvc push -r s3 <stage>``). The
workspace becomes a DVC repository without git whose cache hardlinks the published files
(no second copy on the volume) and whose remote ``publish`` is ``publish.remote``
(``ANONBENCH_DVC_REMOTE`` wins), with ``ANONBENCH_S3_ENDPOINT_URL`` (else ``AWS_ENDPOINT_URL``)
as the S3 endpoint; credentials come only from the environment (:mod:`anonbench.s3`). For one target:

- ``dvc add <folder>`` writes ``<folder>.dvc``: the folder's hash, size and file count. The
  resume records and timings of a variant are ignored (:data:`IGNORE`, as in the
  repository's ``.dvcignore``), so a rerun of the same settings gives the same hash;
- ``dvc push`` uploads what the remote lacks: publishing the same data again uploads nothing;
- the pointer is copied to ``<remote>/runs/<run>/<target>.dvc``, where :func:`pull` (``anonbench
  pull``) finds it from any clone of the repository.

Targets: ``source`` (the raw dataset: public data, hashed for lineage but never pushed),
``prepared`` (statistics), ``models`` (every trained and fine-tuned model) or an
anonymization method (its variant).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from anonbench.anonymizers import plugins
from anonbench.config import Config
from anonbench.io import atomic_write_text, move_into_place
from anonbench.s3 import s3_environment, use_s3_environment

log = logging.getLogger(__name__)
REMOTE = "publish"
RUNS = "runs"
PUBLISHED = Path("published")
# Kept out of every published folder; the repository's .dvcignore holds the same patterns (a test checks it).
IGNORE = ("*.cache", "**/variants/*/timings_*.json", "**/variants/*/records/")


class PublishError(RuntimeError):
    """A target cannot be published or pulled as asked; the message says why."""


def target_path(cfg: Config, target: str) -> Path:
    """The folder a publish target names (relative to the workspace).

    Raises:
        PublishError: For an unknown target.
    """
    folders = {"source": cfg.source_root, "prepared": cfg.paths.data / "prepared", "models": cfg.paths.models}
    if target in folders:
        return folders[target]
    if target in plugins.names() or target in cfg.anonymize.containers:
        return cfg.variant_root(target)
    raise PublishError(f"--target {target!r}: expected source, prepared, models or an anonymization method")


def _remote_config(url: str) -> dict[str, Any]:
    """The DVC remote section for ``url``: an S3 URL takes the endpoint anonbench's S3 settings name.

    The credentials go to DVC through this process's environment (:func:`anonbench.s3.use_s3_environment`),
    never into the workspace's DVC config.
    """
    config: dict[str, Any] = {"url": url}
    endpoint = s3_environment().get("AWS_ENDPOINT_URL")
    if url.startswith("s3://") and endpoint:
        config["endpointurl"] = endpoint
    return config


def _open_workspace_repo(root: Path, url: str) -> Any:
    """The workspace as a DVC repository (created on first use) pointed at the remote ``url``.

    Publish tasks of one run start together on one workspace, so nothing here is read, changed and
    written back: the repository is made once (:func:`_init_once`), ``.dvcignore`` is written whole
    (the same text by every task) and the remote settings are handed to DVC in memory, never
    written to ``.dvc/config``. DVC's own lock orders the adds and pushes.
    """
    from dvc.repo import Repo

    if (root / "dvc.yaml").exists():
        raise PublishError(
            f"{root / 'dvc.yaml'}: this is the repository, whose outputs dvc.yaml versions; use dvc push -r s3 there"
        )
    _init_once(root)
    atomic_write_text(root / ".dvcignore", "".join(f"{pattern}\n" for pattern in IGNORE))
    config = {
        "core": {"analytics": False, "check_update": False, "remote": REMOTE},
        "cache": {"type": "hardlink,copy"},
        "remote": {REMOTE: _remote_config(url)},
    }
    return Repo(str(root), config=config, _wait_for_lock=True)


def _init_once(root: Path) -> None:
    """Make ``root`` a DVC repository without git, once, though several publishes may start at once.

    Each builds ``.dvc`` in a folder of its own and renames it into place; the first rename wins
    (atomic on NFS too) and the others keep that one.
    """
    from dvc.repo import Repo

    if (root / ".dvc").is_dir():
        return
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".dvc-init.", suffix=".tmp"))
    try:
        Repo.init(str(staging), no_scm=True).close()
        move_into_place(staging / ".dvc", root / ".dvc")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _put_pointer(repo: Any, pointer: Path, run: str, target: str) -> tuple[str, bool]:
    """Copy a pointer to ``<remote>/runs/<run>/<target>.dvc`` unless the same one is there; (its URL, uploaded)."""
    remote = repo.cloud.get_remote(REMOTE)
    path = remote.fs.join(remote.path, RUNS, run, f"{target}.dvc")
    url = f"{repo.config['remote'][REMOTE]['url'].rstrip('/')}/{RUNS}/{run}/{target}.dvc"
    if remote.fs.exists(path) and remote.fs.cat_file(path) == pointer.read_bytes():
        return url, False
    remote.fs.makedirs(remote.fs.parent(path), exist_ok=True)
    remote.fs.put_file(str(pointer), path)
    return url, True


def run(cfg: Config, target: str, root: Path = Path(".")) -> list[Path]:
    """Version ``target`` of the workspace ``root`` with DVC, push it and store its pointer in the remote.

    Args:
        cfg: The workspace's configuration (``publish`` section, paths).
        target: ``source``, ``prepared``, ``models`` or an anonymization method.
        root: The workspace (the current folder when run as ``anonbench publish``).

    Returns:
        The pointer file written beside the published folder (``<folder>.dvc``).

    Raises:
        PublishError: No remote configured, an unknown target, or the folder is not there yet.
    """
    url = cfg.publish.resolved_remote
    if not url:
        raise PublishError("no DVC remote to publish to: set publish.remote or ANONBENCH_DVC_REMOTE")
    folder = target_path(cfg, target)
    if not (root / folder).is_dir():
        raise PublishError(f"{root / folder}: nothing to publish (run the stage that makes it first)")
    from anonbench.tracking import mlflow_run

    run_name = cfg.publish.run or root.resolve().name
    use_s3_environment()
    with mlflow_run(cfg, f"publish {target}", "publish", {"target": target}, reads=[folder]):
        repo = _open_workspace_repo(root, url)
        try:
            source = target == "source"  # public data: hashed for lineage, never uploaded
            repo.add(str(folder), no_commit=source)
            pointer = root / folder.with_name(f"{folder.name}.dvc")
            pushed = 0 if source else repo.push(targets=[str(pointer)], remote=REMOTE)
            pointer_url, uploaded = _put_pointer(repo, pointer, run_name, target)
        finally:
            repo.close()
        out = yaml.safe_load(pointer.read_text(encoding="utf-8"))["outs"][0]
        log.info(
            "%s: %s (%s files), %d files uploaded; pointer %s", target, out["md5"], out["nfiles"], pushed, pointer_url
        )
        _log_to_mlflow(out, pushed, pointer_url, uploaded, folder)
    return [folder.with_name(f"{folder.name}.dvc")]


def _log_to_mlflow(out: dict[str, Any], pushed: int, pointer: str, uploaded: bool, folder: Path) -> None:
    """What was versioned (``folder``), where it went, how much was uploaded, into the publish run.

    The lineage tags are set again: the run was opened before the pointer it made existed.
    """
    import mlflow

    from anonbench.tracking import lineage_tags

    mlflow.set_tags({**lineage_tags([folder]), "md5": out["md5"], "pointer": pointer})
    mlflow.log_metrics(
        {"files": out["nfiles"], "bytes": out["size"], "files_uploaded": pushed, "pointer_uploaded": int(uploaded)}
    )


def pull(run: str, names: list[str], remote: str = "s3", root: Path = Path(".")) -> list[Path]:
    """Fetch a published run's datasets into ``published/<run>/`` of a DVC repository (a clone of this one).

    Each pointer is copied from ``<remote>/runs/<run>/<name>.dvc`` to ``published/<run>/<name>.dvc``
    and pulled with DVC, so the folder beside it is byte for byte what the run published; commit
    the pointer to keep the reference.

    Args:
        run: The run's name (its workspace folder's name, or ``publish.run``).
        names: Targets to fetch (``dp2_fullbody``, ``blur``, ``models``, ...); empty for every one
            the run pushed.
        remote: The DVC remote of this repository the run published to (configured with
            ``dvc remote modify --local``).
        root: The repository.

    Returns:
        The folders pulled.

    Raises:
        PublishError: If the remote has no such run or name, or a name was only hashed (the source).
    """
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        store = repo.cloud.get_remote(remote)
        folder = store.fs.join(store.path, RUNS, run)
        listed = store.fs.find(folder) if store.fs.exists(folder) else []
        found = {Path(p).stem: p for p in listed if p.endswith(".dvc")}
        if not found:
            raise PublishError(f"remote {remote!r} has no published run {run!r} (looked in {folder})")
        wanted = names or sorted(n for n in found if n != "source")
        missing = [n for n in wanted if n not in found]
        if missing:
            raise PublishError(f"run {run!r} published {sorted(found)}, not {missing}")
        if "source" in wanted:
            raise PublishError("the source is public data: it is hashed for lineage, not pushed; use anonbench fetch")
        pulled = []
        for name in wanted:
            pointer = root / PUBLISHED / run / f"{name}.dvc"
            pointer.parent.mkdir(parents=True, exist_ok=True)
            store.fs.get_file(found[name], str(pointer))
            repo.pull(targets=[str(pointer)], remote=remote)
            out = yaml.safe_load(pointer.read_text(encoding="utf-8"))["outs"][0]
            pulled.append(pointer.parent / out["path"])
    return pulled
