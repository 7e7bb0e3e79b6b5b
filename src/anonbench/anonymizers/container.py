"""Container methods: an anonymizer in an image of its own, reached through a small file contract.

A method that needs its own environment (as DeepPrivacy2 does) is described in params.yaml by an
image and a command (``anonymize.containers.<name>``, :class:`anonbench.config.ContainerMethod`). The
anonymize stage writes a *job folder*, runs the command once with the folder as its last argument,
and reads what it wrote; everything after (variant images, records, manifest, coverage) is the
stage's, exactly as for an installed method. Contract version :data:`CONTRACT`:

In (written by anonbench, read-only for the method):
    ``request.json``: ``contract``, ``method``, ``seed``, ``dilation_px`` (how far the masks were grown),
    ``params`` (the container's own, as given in params.yaml) and ``images``, a list of
    ``{id, split, file_name, path, height, width, seed, masks}``:
    ``path`` the original image (absolute; mounted read-only at the same path), ``seed`` the image's
    own seed, ``masks`` the image's mask file relative to the job folder.
    ``masks/<id>.npz``: ``masks`` (persons x H x W bool: each person's dilated mask, largest first),
    ``boxes`` (persons x 4 int: x0, y0, x1, y1 of the dilated mask, end-exclusive) and ``sizes``
    (persons x 2 int: the person's width and height before dilation). Only images with a person to
    anonymize are in the request; the stage passes the others through.

Out (written by the method, under ``output/``):
    ``<id>.png``: the anonymized image, the original's size, 8-bit RGB. ``<id>.region.png``: the
    pixels it painted, 8-bit grey, non-zero = painted. ``manifest.json``: ``{"contract": 1, "images":
    {"<id>": {"status": "ok" | "error", "reason": "...", "counts": {...}}}}`` with one entry per
    requested image and, for each ``ok`` image, the counts the container method declares. Written
    last: its presence says the job finished. A non-zero exit status fails the stage.

The stage runs the command with Docker locally (:func:`run_docker`: no network, the job folder
and the image folders mounted at their own paths); the KFP pipeline runs it as a task of its own
between a task that writes the job and the anonymize task that reads it. A finished job whose
request is unchanged is not run again. ``anonbench run-job`` serves the contract with an installed
method or DeepPrivacy2, so anonbench's own images are container methods too (docs/plugins.md).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anonbench.anonymizers.masks import Person, union
from anonbench.config import ContainerMethod
from anonbench.images import UnreadableImage, encode_image, read_image
from anonbench.io import atomic_write_bytes, atomic_write_json

CONTRACT = 1
OUTPUT = "output"
MANIFEST = "manifest.json"
STDERR_LINES = 20


class ContainerError(RuntimeError):
    """A container method broke its run or the contract; the message names the method and the file."""


@dataclass(frozen=True)
class JobImage:
    """One image of a job: where it is, its seed and its persons."""

    image_id: int
    split: str
    file_name: str
    path: Path
    height: int
    width: int
    seed: int
    persons: list[Person]


@dataclass(frozen=True)
class Output:
    """What a container method returned for one image."""

    status: str
    reason: str
    image: np.ndarray | None = None
    region: np.ndarray | None = None
    counts: dict[str, int] | None = None


def request(
    method: str, definition: ContainerMethod, seed: int, dilation_px: int, images: list[JobImage]
) -> dict[str, Any]:
    """The job's ``request.json`` for ``images`` whose masks were grown by ``dilation_px``."""
    return {
        "contract": CONTRACT,
        "method": method,
        "seed": seed,
        "dilation_px": dilation_px,
        "params": definition.params,
        "images": [
            {
                "id": im.image_id,
                "split": im.split,
                "file_name": im.file_name,
                "path": str(im.path),
                "height": im.height,
                "width": im.width,
                "seed": im.seed,
                "masks": f"masks/{im.image_id}.npz",
            }
            for im in images
        ],
    }


def finished(job: Path) -> bool:
    """Whether the job's method wrote its manifest (the last thing it writes)."""
    return (job / OUTPUT / MANIFEST).is_file()


def prepare(
    job: Path, method: str, definition: ContainerMethod, seed: int, dilation_px: int, images: list[JobImage]
) -> bool:
    """Write the job folder for ``images`` unless it already holds this request.

    A folder holding another request (other images, settings or seed) is emptied first, so no output
    of an old request survives.

    Returns:
        Whether the job still has to run (False: this request's outputs are there).
    """
    wanted = request(method, definition, seed, dilation_px, images)
    path = job / "request.json"
    if path.is_file() and json.loads(path.read_text(encoding="utf-8")) == wanted:
        return not finished(job)
    shutil.rmtree(job, ignore_errors=True)
    (job / "masks").mkdir(parents=True)
    for im in images:
        shape = (im.height, im.width)
        with open(job / "masks" / f"{im.image_id}.npz", "wb") as handle:
            np.savez_compressed(
                handle,
                masks=np.stack([union([p], shape) for p in im.persons]),
                boxes=np.array([p.box for p in im.persons], dtype=np.int32),
                sizes=np.array([(p.width, p.height) for p in im.persons], dtype=np.int32),
            )
    atomic_write_json(path, wanted)
    return True


def run_docker(job: Path, definition: ContainerMethod, folders: list[Path]) -> None:
    """Run the method's command in its image with Docker: no network, the job and ``folders`` at their own paths.

    The container runs as this process's user, so what it writes in the job folder is ours. Docker is
    the ``docker`` on PATH or ``$DOCKER``; its daemon the usual ``DOCKER_HOST``.

    Raises:
        ContainerError: Without Docker, or when the command exits non-zero (with the end of its stderr).
    """
    docker = os.environ.get("DOCKER") or shutil.which("docker")
    if not docker:
        raise ContainerError(f"container method image {definition.image}: needs Docker; no docker on PATH (or $DOCKER)")
    (job / OUTPUT).mkdir(exist_ok=True)
    mounts = [f"--volume={job}:{job}"] + [f"--volume={f}:{f}:ro" for f in sorted(set(folders))]
    command = [
        docker, "run", "--rm", "--network=none", f"--user={os.getuid()}:{os.getgid()}",
        *(["--gpus=all"] if definition.gpu else []), *mounts, definition.image, *definition.command, str(job),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-STDERR_LINES:])
        raise ContainerError(
            f"container method image {definition.image} ({' '.join(definition.command)} {job}) exited "
            f"{done.returncode}:\n{tail}"
        )


def read_manifest(job: Path, method: str) -> dict[str, dict[str, Any]]:
    """The job's output manifest, checked against the contract and its request: every image accounted for.

    Read once per process and manifest version (a worker reads it for each of its images).

    Raises:
        ContainerError: Naming the manifest file and what is wrong with it.
    """
    path = job / OUTPUT / MANIFEST
    stat = path.stat() if path.is_file() else None
    return _checked_manifest(path, method, (stat.st_mtime_ns, stat.st_size) if stat else None)


@functools.lru_cache(maxsize=4)
def _checked_manifest(path: Path, method: str, version: tuple[int, int] | None) -> dict[str, dict[str, Any]]:
    """:func:`read_manifest` for one version of the file (``version``: its mtime and size, None: absent)."""
    job = path.parent.parent
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ContainerError(f"container method {method!r}: {path}: no readable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("contract") != CONTRACT:
        raise ContainerError(f"container method {method!r}: {path}: contract is not {CONTRACT}")
    entries = manifest.get("images")
    requested = {str(im["id"]) for im in json.loads((job / "request.json").read_text(encoding="utf-8"))["images"]}
    if not isinstance(entries, dict):
        raise ContainerError(f"container method {method!r}: {path}: 'images' must map image ids to entries")
    if missing := sorted(requested - set(entries), key=int):
        raise ContainerError(f"container method {method!r}: {path}: no entry for image ids {missing[:10]}")
    for key in requested:
        entry = entries[key]
        if not isinstance(entry, dict) or entry.get("status") not in ("ok", "error"):
            raise ContainerError(f"container method {method!r}: {path}: image {key}: status must be ok or error")
    return {key: entries[key] for key in requested}


def read_output(job: Path, method: str, definition: ContainerMethod, image_id: int, shape: tuple[int, ...]) -> Output:
    """One image's result from a finished job.

    Raises:
        ContainerError: For an image or region file missing, undecodable or of the wrong size, or counts
            other than the declared ones, naming the file.
    """
    entry = read_manifest(job, method)[str(image_id)]
    if entry["status"] == "error":
        return Output("error", f"container method {method!r}: {entry.get('reason') or 'no reason given'}")
    counts = entry.get("counts") or {}
    if sorted(counts) != sorted(definition.counts) or not all(type(v) is int for v in counts.values()):
        raise ContainerError(
            f"container method {method!r}: {job / OUTPUT / MANIFEST}: image {image_id}: counts {counts}, "
            f"expected ints for {definition.counts}"
        )
    try:
        image = read_image(job / OUTPUT / f"{image_id}.png")
        region = read_image(job / OUTPUT / f"{image_id}.region.png")[..., 0] > 0
    except UnreadableImage as exc:
        raise ContainerError(f"container method {method!r}: {exc}") from None
    if image.shape != shape:
        raise ContainerError(
            f"container method {method!r}: {job / OUTPUT / f'{image_id}.png'}: {image.shape[1]}x{image.shape[0]}, "
            f"the original is {shape[1]}x{shape[0]}"
        )
    return Output("ok", "", image, region, dict(counts))


def write_output(job: Path, image_id: int, image: np.ndarray, region: np.ndarray) -> None:
    """Write one image's result the way the contract asks (for methods written in Python with anonbench)."""
    atomic_write_bytes(job / OUTPUT / f"{image_id}.png", encode_image(image))
    atomic_write_bytes(job / OUTPUT / f"{image_id}.region.png", encode_image(region.astype(np.uint8) * 255))


def persons_of(job: Path, entry: dict[str, Any], dilation_px: int) -> list[Person]:
    """The persons of one requested image, as :class:`Person` (the form an installed method takes)."""
    with np.load(job / entry["masks"]) as stored:
        masks, boxes, sizes = stored["masks"], stored["boxes"], stored["sizes"]
    return [
        Person(int(x0), int(y0), mask[y0:y1, x0:x1].copy(), int(w), int(h), dilation_px)
        for mask, (x0, y0, x1, y1), (w, h) in zip(masks, boxes, sizes, strict=True)
    ]


def serve(job: Path, method: str) -> dict[str, int]:
    """Do a job with an installed method or DeepPrivacy2: anonbench's side of the contract (``anonbench run-job``).

    The request's ``params`` are the method's settings (``anonymize.<method>``, or ``anonymize.dp2`` for a
    DeepPrivacy2 method), validated by its schema. Each image gets the persons and seed the request gives;
    an image that cannot be read or on which DeepPrivacy2 raises is reported as an error with the reason.
    A DeepPrivacy2 method reports ``persons_below_size_filter`` (declare it in the container's ``counts``).

    Args:
        job: The job folder.
        method: An installed method's name, dp2_fullbody or dp2_face.

    Returns:
        How many images ended ``ok`` and ``error``.
    """
    from anonbench.anonymizers import plugins
    from anonbench.anonymizers.masks import changed_pixels
    from anonbench.config import DeepPrivacy2
    from anonbench.names import DP2_METHODS

    asked = json.loads((job / "request.json").read_text(encoding="utf-8"))
    if asked.get("contract") != CONTRACT:
        raise ContainerError(f"{job / 'request.json'}: contract {asked.get('contract')!r}; anonbench serves {CONTRACT}")
    if method in DP2_METHODS:
        from anonbench.anonymizers.dp2 import Dp2Anonymizer

        dp2 = Dp2Anonymizer(DeepPrivacy2.model_validate(asked["params"]), method, asked["seed"])
    else:
        installed = plugins.get(method)
        settings = installed.settings(asked["params"])
    (job / OUTPUT).mkdir(exist_ok=True)
    entries: dict[str, dict[str, Any]] = {}
    for entry in asked["images"]:
        try:
            image = read_image(Path(entry["path"]))
        except UnreadableImage as exc:
            entries[str(entry["id"])] = {"status": "error", "reason": str(exc), "counts": {}}
            continue
        persons = persons_of(job, entry, asked["dilation_px"])
        if method in DP2_METHODS:
            try:
                result = dp2(image, [union([p], image.shape) for p in persons], entry["seed"])
            except Exception as exc:  # third-party code: whatever it raises on one image is that image's failure
                entries[str(entry["id"])] = {"status": "error", "reason": f"DeepPrivacy2 raised {exc!r}", "counts": {}}
                continue
            out, region = result.image, changed_pixels(image, result.image)
            counts: Mapping[str, int] = {"persons_below_size_filter": result.below_size_filter}
        else:
            out, region, counts = installed(image, persons, settings, np.random.default_rng(entry["seed"]))
        write_output(job, entry["id"], out, region)
        entries[str(entry["id"])] = {"status": "ok", "reason": "", "counts": dict(counts)}
    atomic_write_json(job / OUTPUT / MANIFEST, {"contract": CONTRACT, "images": entries})
    statuses = [e["status"] for e in entries.values()]
    return {"ok": statuses.count("ok"), "error": statuses.count("error")}
