"""Detector families: sizes, model ids, parameter counts, and the combinations the config refuses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anonbench.cli import app
from anonbench.config import ConfigError, load_config, model_id, split_model_id
from anonbench.families import DEFAULT_FAMILY, FAMILIES, spec
from anonbench.io import atomic_write_json
from anonbench.study import Study, load_evaluations
from anonbench.yolo import load_model, param_counts

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
DOC = Path(__file__).resolve().parents[2] / "docs" / "model-grid.md"
# (training graph, fused inference graph) from each family's Ultralytics yaml with 80 classes, as
# docs/model-grid.md lists them. YOLOv10's fused counts are its paper's Table 2 (2.3/7.2/15.4/24.4/29.5 M);
# the others match Ultralytics' published model tables (YOLOv8n 3.2 M, YOLO11n 2.6 M, RT-DETR-l 32.9 M).
PARAM_COUNTS = {
    "yolov10": {"n": (2_775_520, 2_299_264), "s": (8_128_272, 7_248_960), "m": (16_576_768, 15_359_488),
                "l": (25_888_688, 24_371_008), "x": (31_808_960, 29_473_568)},
    "yolov8": {"n": (3_157_200, 3_151_904), "s": (11_166_560, 11_156_544), "m": (25_902_640, 25_886_080),
               "l": (43_691_520, 43_668_288), "x": (68_229_648, 68_200_608)},
    "yolo11": {"n": (2_624_080, 2_616_248), "s": (9_458_752, 9_443_760), "m": (20_114_688, 20_091_712),
               "l": (25_372_160, 25_340_992), "x": (56_966_176, 56_919_424)},
    "rtdetr": {"l": (32_970_476, 32_148_140), "x": (67_467_852, 65_631_836)},
}  # fmt: skip


def test_the_parameter_counts_of_every_family_and_size_are_the_documented_ones() -> None:
    documented: dict[str, dict[str, tuple[int, int]]] = {}
    rows = re.findall(r"^\| (\w+) \| (\w) \| ([\d,]+) \| ([\d,]+) \|", DOC.read_text(), re.M)
    for family, size, params, fused in rows:
        documented.setdefault(family, {})[size] = (int(params.replace(",", "")), int(fused.replace(",", "")))
    assert documented == PARAM_COUNTS
    for family, sizes in PARAM_COUNTS.items():
        assert tuple(sizes) == FAMILIES[family].sizes
        for size, counts in sizes.items():
            net = load_model(spec(family).model_yaml(size), family).model
            assert tuple(param_counts(net, family).values()) == counts, (family, size)  # type: ignore[arg-type]


def test_model_ids_keep_yolov10s_and_name_every_other_family() -> None:
    assert model_id("org", "n") == model_id("org", "n", DEFAULT_FAMILY) == "org-n"
    assert model_id("dp2_fullbody", "m", "yolov8") == "dp2_fullbody-yolov8-m"
    for family, sizes in PARAM_COUNTS.items():
        for size in sizes:
            for variant in ("org", "dp2_fullbody"):
                assert split_model_id(model_id(variant, size, family)) == (variant, family, size)


def test_the_grid_trains_each_family_at_the_sizes_it_has() -> None:
    cfg = load_config(PARAMS, None, ["train.families=[yolov10,rtdetr,yolov8]", "train.sizes=[n,l]"])
    org = [(f, s) for v, f, s in cfg.train.models if v == "org"]
    assert org == [("yolov10", "n"), ("yolov10", "l"), ("rtdetr", "l"), ("yolov8", "n"), ("yolov8", "l")]
    assert load_config(PARAMS).train.models == [(v, "yolov10", "n") for v in ("org", "blur", "pixelate", "mask")]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.families=[yolov10,rtdetr]"], "train: families: rtdetr has sizes l, x only, and sizes ['n'] has none"),
        (["train.families=[yolov8]"], "train.families: ['yolov8'] lacks yolov10, the family of the fine-tunes' base"),
        (["train.families=[yolov10,yolov10]"], "names a family twice"),
        (["train.families=[yolov9]"], "train.families"),
    ],
)
def test_impossible_family_settings_fail_with_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(PARAMS, None, overrides)
    assert message in str(error.value) and "\n" not in str(error.value).strip()


def test_train_refuses_a_size_the_family_lacks_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--variant", "org", "--family", "rtdetr", "--size", "n",
                                      "--params", str(PARAMS), "--set", f"paths.data={tmp_path}"])  # fmt: skip
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: size 'n' does not exist for rtdetr: Ultralytics ships rtdetr-l.yaml, rtdetr-x.yaml"
    ]


def test_the_study_reads_each_evaluations_family(tmp_path: Path) -> None:
    cfg = load_config(PARAMS, None, [f"paths.metrics={tmp_path}", "train.families=[yolov10,yolov8]"])
    docs = {
        "org-yolov8-n_on_org": {"model_id": "org-yolov8-n", "family": "yolov8"},
        "org-n_on_org": {"model_id": "org-n", "family": "yolov10"},
        "mask-n_on_org": {"model_id": "mask-n"},  # written before families: YOLOv10
    }
    for folder, doc in docs.items():
        record = {**doc, "train_data": "org", "model_size": "n", "eval_data": "org", "AP": 0.5}
        atomic_write_json(tmp_path / "eval" / folder / "metrics.json", record)
    study = Study(cfg, load_evaluations(cfg))
    assert {e.model_id: e.family for e in study.evaluations} == {
        "mask-n": "yolov10",
        "org-n": "yolov10",
        "org-yolov8-n": "yolov8",
    }
    assert study.families == ["yolov10", "yolov8"]  # train.families order: the report's Q2 compares them
