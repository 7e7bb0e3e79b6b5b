"""The cost model (benchmarks/scale/cost.py) of the paper's grid and its extension, from params.yaml.

Fast: it reads the committed rehearsal records, runs nothing.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from anonbench.config import ORIGINAL, load_config
from benchmarks.common import RESULTS
from benchmarks.scale import cost
from pipelines.settings import load_settings
from tests.conftest import PARAMS

SCALE = json.loads((RESULTS / "scale.json").read_text())
LOADER = json.loads((RESULTS / "loader_speed.json").read_text())


def stage(plan: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The row of the one stage whose name starts with ``prefix``."""
    (row,) = [r for r in plan["rows"] if r["stage"].startswith(prefix)]
    return row


def test_the_paper_trains_13_models_and_its_extension_25() -> None:
    paper, extension = (
        cost.profile_plans(SCALE, load_config(PARAMS, p), [4], 1, 4, LOADER) for p in ("paper", "paper-all-sizes")
    )
    assert (paper["trainings"], paper["evaluations"]) == (13, (13 + 6) * 5)
    assert (extension["trainings"], extension["evaluations"]) == (25, (25 + 6) * 5)
    (small,), (large,) = paper["plans"], extension["plans"]
    assert stage(small, "train")["stage"] == "train, 13 models" and stage(small, "evaluate, 65")
    # Org and Full-Body at every size in both; the extension adds blur, pixelate and mask at n, s, l and x.
    hours = {s: days * 24 * 100 / 300 / cost.GPU["a100_over_v100"] for s, days in cost.V100_DAYS_PER_300_EPOCHS.items()}
    assert stage(small, "train")["gpu_h"] == pytest.approx(2 * sum(hours.values()) + 3 * hours["m"])
    assert stage(large, "train")["gpu_h"] == pytest.approx(5 * sum(hours.values()))
    added = 3 * (sum(hours.values()) - hours["m"]) + (125 - 65) * stage(small, "evaluate, 65")["gpu_h"] / 65
    assert large["gpu_h"] - small["gpu_h"] == pytest.approx(added)
    assert small["wall_h"] < large["wall_h"]


def test_committed_costs_are_what_the_model_gives_for_params_yaml() -> None:
    """scale_cost.json (and the tables of docs/scale.md) follow params.yaml and scale.json: rerun the model."""
    committed = json.loads((RESULTS / "scale_cost.json").read_text())
    assert committed["scale"] == "scale.json" and list(committed["profiles"]) == list(cost.PROFILES)
    for profile, found in committed["profiles"].items():
        again = cost.profile_plans(SCALE, load_config(PARAMS, profile), [1, 4, 8], 1, 4, LOADER)
        assert found == json.loads(json.dumps(again)), f"{profile}: run python -m benchmarks.scale.cost"


def test_the_loader_rate_is_the_measured_one_and_each_size_gets_the_workers_its_gpu_needs() -> None:
    # The per-core rate: the paper augmentation's slower worker count, as benchmarks/loader_speed.py measured it.
    measured = LOADER["cases"][cost.LOADER_CASE]
    per_core = min(found["images_per_cpu_second"] for found in measured.values())
    assert LOADER["images_per_core_second"][cost.LOADER_CASE] == per_core
    cfg = load_config(PARAMS, "paper-all-sizes")
    fed = cost.feeding(LOADER, cfg, gpus_per_node=1)
    assert fed["loader_images_per_core_second"] == per_core and list(fed["sizes"]) == ["n", "s", "m", "l", "x"]
    for size, row in fed["sizes"].items():
        # The GPU's images/s is the training-time assumption read the other way: 100 epochs take its GPU-hours.
        hours = cost.V100_DAYS_PER_300_EPOCHS[size] * 24 * 100 / 300 / cost.GPU["a100_over_v100"]
        assert cost.TRAIN_IMAGES * 100 / row["gpu_images_per_s"] / 3600 == pytest.approx(hours)
        # Enough workers, and not one more than enough; one more CPU drives the GPU.
        assert row["workers"] * per_core >= row["gpu_images_per_s"] > (row["workers"] - 1) * per_core
        assert row["cpus"] == row["workers"] + 1
    assert fed["workers"] == fed["sizes"]["n"]["workers"] > fed["sizes"]["x"]["workers"]  # the small model eats most
    two = cost.feeding(LOADER, cfg, gpus_per_node=2)  # DDP: Ultralytics' workers are per GPU
    assert two["workers"] == fed["workers"] and two["cpus"] == 2 * fed["cpus"]


def test_the_cluster_settings_feed_every_training_of_both_profiles() -> None:
    needs = [cost.feeding(LOADER, load_config(PARAMS, p), 1) for p in cost.PROFILES]
    train = load_settings().resources("train")
    assert train.gpus == 1 and train.cpu is not None
    assert int(train.cpu) == max(fed["cpus"] for fed in needs)
    assert load_config(PARAMS, "paper").train.workers == max(fed["workers"] for fed in needs)


def test_privacy_and_the_loader_enter_the_cpu_hours() -> None:
    cfg = load_config(PARAMS, "paper")
    found = cost.profile_plans(SCALE, cfg, [4], 1, 4, LOADER)
    (plan,) = found["plans"]
    audited = [ORIGINAL, *cfg.anonymize.methods]
    per_variant = found["privacy_cpu_h_per_variant"]
    # The notes' seconds per image on 2 cores, both counted busy, over the originals and the variant of val2017.
    assert per_variant == {
        detector: pytest.approx(seconds * 2 * 2 * cost.VAL_IMAGES / 3600) for detector, seconds in cost.PRIVACY.items()
    }
    row = stage(plan, "privacy")
    assert row["stage"] == f"privacy, {len(audited)} variants" and row["gpu_h"] == 0
    assert row["cpu_h"] == pytest.approx(len(audited) * per_variant[cost.PRIVACY_DETECTOR])
    cores = int(load_settings().resources("privacy").cpu or 0)
    assert row["wall_h"] == pytest.approx(math.ceil(len(audited) / 4) * per_variant[cost.PRIVACY_DETECTOR] / cores)
    # A training's loader works beside the GPU: CPU-hours for every image of every epoch, no wall time.
    train = stage(plan, "train")
    images = sum(cfg.train.epochs * cost.TRAIN_IMAGES for _ in cfg.train.models)
    assert train["cpu_h"] == pytest.approx(images / found["feeding"]["loader_images_per_core_second"] / 3600)
