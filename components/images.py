"""The container images the components run in, named in one place.

KFP schedules and caches by image string, so images are named by immutable
tags (``docker/build.sh`` tags ``anonbench-<name>:<version>-<git sha>``) or
digests. Each image comes from, in order: the environment
(``ANONBENCH_CPU_IMAGE``, ``ANONBENCH_TRAIN_IMAGE``, ``ANONBENCH_DP2_IMAGE``),
``build/images.env`` as ``make images`` leaves it, else
``anonbench-<name>:<package version>``. The choice is made when the pipeline
is compiled.
"""

from __future__ import annotations

import functools
import os
from importlib.metadata import version
from pathlib import Path

from kfp import dsl

BUILT_IMAGES = Path(__file__).resolve().parents[1] / "build" / "images.env"


def _built() -> dict[str, str]:
    """``KEY=image`` lines written by docker/build.sh, if images were built here."""
    if not BUILT_IMAGES.is_file():
        return {}
    lines = BUILT_IMAGES.read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def image(name: str) -> str:
    """The image reference for ``cpu``, ``train`` or ``dp2``."""
    key = f"ANONBENCH_{name.upper()}_IMAGE"
    return os.environ.get(key) or _built().get(key) or f"anonbench-{name}:{version('anonbench')}"


CPU_IMAGE = image("cpu")
TRAIN_IMAGE = image("train")
DP2_IMAGE = image("dp2")

# The images carry kfp (the `orchestrate` extra): no pip install at task start, so tasks run offline.
cpu_component = functools.partial(dsl.component, base_image=CPU_IMAGE, install_kfp_package=False)
train_component = functools.partial(dsl.component, base_image=TRAIN_IMAGE, install_kfp_package=False)
dp2_component = functools.partial(dsl.component, base_image=DP2_IMAGE, install_kfp_package=False)
