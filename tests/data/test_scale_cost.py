"""The cost model (benchmarks/scale/cost.py) of the paper's grid and its extension, from params.yaml.

Fast: it reads the committed rehearsal records, runs nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from anonbench.config import load_config
from benchmarks.common import RESULTS
from benchmarks.scale import cost
from tests.conftest import PARAMS

SCALE = json.loads((RESULTS / "scale.json").read_text())


def stage(plan: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The row of the one stage whose name starts with ``prefix``."""
    (row,) = [r for r in plan["rows"] if r["stage"].startswith(prefix)]
    return row


def test_the_paper_trains_13_models_and_its_extension_25() -> None:
    paper, extension = (
        cost.profile_plans(SCALE, load_config(PARAMS, p), [4], 1, 4) for p in ("paper", "paper-all-sizes")
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
        again = cost.profile_plans(SCALE, load_config(PARAMS, profile), [1, 4, 8], 1, 4)
        assert found == json.loads(json.dumps(again)), f"{profile}: run python -m benchmarks.scale.cost"
