"""Offline by default, set in one place.

Ultralytics, MLflow and DVC each try the network unless told not to (font
download, settings sync, update checks, telemetry). :func:`go_offline` applies
the settings verified in ``shared/notes/environment.md`` before any of them is
imported; only the explicit ``anonbench fetch`` download talks to the network.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import matplotlib

ENVIRONMENT = {
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "false",
    "YOLO_VERBOSE": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
}
ULTRALYTICS_SETTINGS = {
    "sync": False,
    "mlflow": False,
    "comet": False,
    "clearml": False,
    "dvc": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "neptune": False,
    "hub": False,
}


def config_dir() -> Path:
    """Folder for Ultralytics settings and its font: YOLO_CONFIG_DIR, else ~/.cache/anonbench."""
    return Path(os.environ.get("YOLO_CONFIG_DIR") or Path.home() / ".cache" / "anonbench" / "ultralytics")


def _place_font(folder: Path) -> None:
    """Give Ultralytics an Arial.ttf so its font check never downloads one (any TTF will do)."""
    target = folder / "Ultralytics" / "Arial.ttf"
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    shutil.copyfile(font, target)


def go_offline() -> None:
    """Set the environment so no library tries the network; safe to call more than once."""
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir()))
    os.environ.setdefault("MPLBACKEND", "Agg")
    _place_font(Path(os.environ["YOLO_CONFIG_DIR"]))


def configure_ultralytics() -> None:
    """Turn off every Ultralytics integration and sync; call after :func:`go_offline`."""
    from PIL import Image
    from ultralytics.utils import SETTINGS, patches

    # Integrations differ between Ultralytics releases and an unknown key raises: set the ones this release has.
    SETTINGS.update({key: value for key, value in ULTRALYTICS_SETTINGS.items() if key in SETTINGS})
    # Importing Ultralytics replaces PIL.Image.open, process-wide, with a wrapper that tries to pip-install
    # pi-heif whenever a file is not a known image: a network attempt, and corrupt files stop reading as
    # corrupt. COCO has no HEIF images, so PIL's own opener goes back.
    Image.open = patches._image_open
