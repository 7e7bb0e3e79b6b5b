"""The container images the components run in, named in one place.

KFP schedules and caches by image string, so images are named by immutable
tags (``docker/build.sh`` tags ``anonbench-<name>:<version>-<git sha>``) or
digests: ``build.sh --push`` records ``<registry>/anonbench-<name>:<tag>@sha256:...``, so
pods pull by the digest the registry gave. Each image comes from, in order: the environment
(``ANONBENCH_CPU_IMAGE``, ``ANONBENCH_TRAIN_IMAGE``, ``ANONBENCH_DP2_IMAGE``),
``build/images.env`` as ``make images`` leaves it, else
``anonbench-<name>:<package version>``. The choice is made when the pipeline
is compiled. Each task is also told which image it runs (:func:`lineage`), so
its MLflow runs are tagged with the image and its digest.
"""

from __future__ import annotations

import functools
import os
from importlib.metadata import version
from pathlib import Path

from kfp import dsl

BUILT_IMAGES = Path(__file__).resolve().parents[1] / "build" / "images.env"


def _built() -> dict[str, str]:
    """``KEY=value`` lines written by docker/build.sh, if images were built here."""
    if not BUILT_IMAGES.is_file():
        return {}
    lines = BUILT_IMAGES.read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def image(name: str) -> str:
    """The image reference for ``cpu``, ``train`` or ``dp2``."""
    key = f"ANONBENCH_{name.upper()}_IMAGE"
    return os.environ.get(key) or _built().get(key) or f"anonbench-{name}:{version('anonbench')}"


def registry(reference: str) -> str | None:
    """The registry host an image reference names, None for a bare name.

    Docker's rule: the first path component is a registry when it holds a dot or a port or is
    ``localhost``. ``anonbench-cpu:0.1.0`` has none (a node would look for it on Docker Hub's
    ``library/``); ``registry.example.org/vision/anonbench-cpu:0.1.0`` and
    ``docker.io/me/anonbench-cpu`` have one.
    """
    first, slash, _ = reference.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def digest(name: str) -> str:
    """The digest of image ``name``: from a reference pinned by digest, else as ``docker/build.sh`` recorded it.

    ``build.sh --push`` records the registry's digest, a local build the image id; "" when unknown.
    """
    reference = image(name)
    if "@sha256:" in reference:
        return reference.split("@", 1)[1]
    key = f"ANONBENCH_{name.upper()}_IMAGE_DIGEST"
    return os.environ.get(key) or _built().get(key, "")


CPU_IMAGE = image("cpu")
TRAIN_IMAGE = image("train")
DP2_IMAGE = image("dp2")
IMAGES = {"cpu": CPU_IMAGE, "train": TRAIN_IMAGE, "dp2": DP2_IMAGE}

# The images carry kfp (the `orchestrate` extra): no pip install at task start, so tasks run offline.
cpu_component = functools.partial(dsl.component, base_image=CPU_IMAGE, install_kfp_package=False)
train_component = functools.partial(dsl.component, base_image=TRAIN_IMAGE, install_kfp_package=False)
dp2_component = functools.partial(dsl.component, base_image=DP2_IMAGE, install_kfp_package=False)


def lineage(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Give a task the reference and digest of its image as environment (``anonbench.tracking`` tags runs with them).

    Args:
        task: A task of one of this project's components.

    Returns:
        The task.
    """
    container = task.component_spec.implementation.container
    reference = container.image if container is not None else ""
    name = next((n for n, ref in IMAGES.items() if ref == reference), None)
    task.set_env_variable("ANONBENCH_IMAGE", reference)
    task.set_env_variable("ANONBENCH_IMAGE_DIGEST", digest(name) if name else "")
    return task
