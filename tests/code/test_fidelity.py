"""The fidelity table (docs/fidelity.yaml, shown in docs/fidelity.md) against the paper profile's real arguments.

The Ultralytics arguments come from the functions the train and finetune stages call
(:func:`anonbench.stages.train.train_args`, :func:`anonbench.stages.finetune.finetune_args`), resolved over
the installed Ultralytics' defaults as its trainer resolves them (``get_cfg``); the inference settings from
:class:`anonbench.predict.PredictSettings` under ``evaluate.protocol=authors``. A pinned value that drifts, a
default that changes under an Ultralytics upgrade, or a new argument without a row fails here.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from ultralytics.cfg import get_cfg

from anonbench.config import Config, load_config
from anonbench.predict import PredictSettings
from anonbench.stages.finetune import finetune_args
from anonbench.stages.train import train_args

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "params.yaml"
TABLE = REPO / "docs" / "fidelity.yaml"
DOC = REPO / "docs" / "fidelity.md"
ROWS: list[dict[str, Any]] = yaml.safe_load(TABLE.read_text(encoding="utf-8"))
STAGES = {"train", "finetune", "predict", "score", "data"}
DATA = Path("dataset.yaml")  # the stages pass the export's yaml; no argument depends on its content


@cache
def paper(*overrides: str) -> Config:
    return load_config(PARAMS, profile="paper", overrides=list(overrides))


def resolved(row: dict[str, Any]) -> Any:
    """The Ultralytics configuration a training with the row's stage (and freeze config) runs with."""
    cfg = paper()
    if row["stage"] == "train":
        args = train_args(cfg, DATA)
    else:
        args = finetune_args(cfg, DATA, cfg.finetune.frozen_layers(row.get("freeze", "none")))
    return get_cfg(overrides=args)


def anonbench_value(row: dict[str, Any]) -> Any:
    """What anonbench actually uses for the row's checked key(s)."""
    (kind, keys), *_ = row["check"].items()
    many = isinstance(keys, list)
    names = keys if many else [keys]
    if kind == "ultralytics":
        source = resolved(row)
        values = [getattr(source, name) for name in names]
    elif kind == "predict":
        settings = PredictSettings.of(paper("evaluate.protocol=authors"))
        values = [getattr(settings, name) for name in names]
    elif kind == "param":
        values = []
        for name in names:
            value: Any = paper()
            for part in name.split("."):
                value = getattr(value, part)
            values.append(value)
    else:
        raise AssertionError(f"unknown check {kind!r}")
    return values if many else values[0]


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['stage']}:{r['setting']}" for r in ROWS])
def test_row_is_complete_and_consistent(row: dict[str, Any]) -> None:
    assert row["stage"] in STAGES
    assert row["status"] in {"same", "pinned", "explained"}
    assert row["source"]
    if row["status"] == "explained":
        assert row.get("note"), "an explained difference says why"
        assert row["authors"] != row["anonbench"], "explained, yet the values are the same"
    else:
        assert row["authors"] == row["anonbench"]
    if row["status"] == "pinned":
        node: Any = yaml.safe_load(PARAMS.read_text(encoding="utf-8"))["profiles"]["paper"]
        for part in row["pin"].split("."):
            assert isinstance(node, dict) and part in node, f"{row['pin']} is not set in profiles.paper"
            node = node[part]


@pytest.mark.parametrize("row", [r for r in ROWS if "check" in r], ids=lambda r: f"{r['stage']}:{r['setting']}")
def test_anonbench_value_is_what_the_paper_profile_runs(row: dict[str, Any]) -> None:
    assert anonbench_value(row) == row["anonbench"]


@pytest.mark.parametrize(
    ("stage", "args"),
    [
        ("train", lambda cfg: train_args(cfg, DATA)),
        ("finetune", lambda cfg: finetune_args(cfg, DATA, [])),
    ],
)
def test_every_argument_anonbench_passes_has_a_row(stage: str, args: Any) -> None:
    checked = set()
    for row in ROWS:
        if row["stage"] == stage and "ultralytics" in row.get("check", {}):
            keys = row["check"]["ultralytics"]
            checked |= set(keys if isinstance(keys, list) else [keys])
    assert set(args(paper())) - {"data"} <= checked


def render(value: Any) -> str:
    """A table cell: YAML's spelling of booleans and null, lists comma-separated."""
    if isinstance(value, bool) or value is None:
        return yaml.safe_dump(value).split("\n")[0]
    if isinstance(value, list):
        return "[" + ", ".join(render(v) for v in value) + "]"
    return str(value)


def test_the_document_shows_the_same_rows() -> None:
    lines = [line for line in DOC.read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    shown = lines[1:]  # after the header (the rule line starts with "|-")
    expected = []
    for row in ROWS:
        status = f"pinned (`{row['pin']}`)" if row["status"] == "pinned" else row["status"]
        cells = [row["stage"], row["setting"], render(row["authors"]), row["source"], render(row["anonbench"])]
        cells += [status, row.get("note", "")]
        expected.append("| " + " | ".join(cells) + " |")
    assert shown == expected
