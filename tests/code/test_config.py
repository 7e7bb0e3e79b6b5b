"""params.yaml is the single source of settings: both profiles load, and bad values fail naming the key."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from anonbench.cli import app
from anonbench.config import ConfigError, deep_merge, load_config, resolve
from tests.conftest import PARAMS


def test_mini_is_the_default_profile() -> None:
    cfg = load_config(PARAMS)
    assert cfg.profile == "mini"
    assert cfg.data.source == "coco-mini"
    assert cfg.train.sizes == ["n"]
    assert cfg.train.device == "cpu"


def test_paper_profile_has_the_paper_settings() -> None:
    cfg = load_config(PARAMS, profile="paper")
    assert cfg.data.source == "coco2017"
    assert cfg.train.sizes == ["n", "s", "m", "l", "x"]
    assert (cfg.train.optimizer, cfg.train.batch, cfg.seed, cfg.train.deterministic) == ("SGD", 40, 0, True)
    assert (cfg.prepare.frequency_borders.high, cfg.prepare.frequency_borders.medium) == (3200, 1400)
    assert (cfg.finetune.base.variant, cfg.finetune.base.size, cfg.finetune.epochs) == ("org", "m", 30)
    assert (cfg.finetune.lr0, cfg.finetune.lrf, cfg.finetune.momentum) == (0.001, 0.01, 0.85)
    assert (cfg.finetune.weight_decay, cfg.finetune.warmup_epochs, cfg.finetune.warmup_momentum) == (0.0007, 4, 0.8)
    assert cfg.finetune.frozen_layers("backbone") == list(range(11))
    assert cfg.finetune.frozen_layers("psa_neck_head") == list(range(10, 24))
    assert cfg.finetune.frozen_layers("none") == []
    assert len(cfg.classes.comparison) == 14
    assert len(cfg.classes.size_frequency_classes) == 36
    # The authors' procedures: last epoch with validation off, 20 % of the training set for fine-tuning.
    assert (cfg.train.checkpoint, cfg.train.val) == ("last", False)
    assert (cfg.finetune.fraction, cfg.finetune.fraction_of) == (0.2, "train")
    assert cfg.evaluate.protocol == "coco"  # DESIGN.md: the authors' scoring faults are not repeated by default


PAPER_GRID = [
    *(("org", "yolov10", s) for s in "nsmlx"),
    *(("dp2_fullbody", "yolov10", s) for s in "nsmlx"),
    ("blur", "yolov10", "m"),
    ("pixelate", "yolov10", "m"),
    ("mask", "yolov10", "m"),
]


def test_paper_profile_trains_the_papers_grid_and_its_extension_every_size() -> None:
    paper = load_config(PARAMS, profile="paper")
    assert paper.train.models == PAPER_GRID  # Org and Full-Body n..x, the classic methods at m: 13
    assert paper.train.sizes_for("blur") == ["m"] and paper.train.sizes_for("org") == list("nsmlx")
    extension = load_config(PARAMS, profile="paper-all-sizes")
    assert len(extension.train.models) == 25
    assert extension.train.models == [(v, "yolov10", s) for v in extension.train.variants for s in "nsmlx"]
    # `extends: paper`: the extension is the paper profile but for the narrowed sizes.
    differ = {"profile": "paper-all-sizes", "train": {"sizes_by_variant": extension.train.sizes_by_variant}}
    assert extension.model_dump() == deep_merge(paper.model_dump(), differ)


def test_mini_trains_every_variant_at_every_size() -> None:
    mini = load_config(PARAMS, overrides=["train.sizes=[n, s]", "finetune.base.size=s"])
    assert mini.train.sizes_by_variant == {}
    assert mini.train.models == [(v, "yolov10", s) for v in ("org", "blur", "pixelate", "mask") for s in "ns"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.sizes_by_variant={blur: [xl]}", "train.sizes_by_variant.blur.0: Input should be 'n', 's', 'm'"),
        ("train.sizes_by_variant={blur: []}", "train.sizes_by_variant.blur: List should have at least 1 item"),
        ("train.sizes_by_variant={blurr: [m]}", "train.sizes_by_variant: unknown anonymization method 'blurr'"),
        ("train.sizes_by_variant={org: [n]}", "finetune.base.size: org-m is not trained (train.sizes)"),
        ("train.sizes_by_variant={blur: [n], mask: [s]}",
         "train.sizes_by_variant: ['blur', 'mask'] not trained at 'm' (finetune.base.size), the size at which the "
         "report compares every variant"),
    ],
)  # fmt: skip
def test_a_narrowed_grid_is_checked(override: str, message: str) -> None:
    sizes = ["train.sizes=[n, m]", "finetune.base.size=m"]
    with pytest.raises(ConfigError) as err:
        load_config(PARAMS, overrides=[*sizes, override])
    assert message in str(err.value)


def test_a_narrowed_grid_takes_the_listed_sizes_that_train_sizes_has() -> None:
    cfg = load_config(
        PARAMS, overrides=["train.sizes=[n, m]", "finetune.base.size=m", "train.sizes_by_variant={blur: [s, m]}"]
    )
    assert cfg.train.sizes_for("blur") == ["m"] and cfg.train.sizes_for("mask") == ["n", "m"]
    assert len(cfg.train.models) == 7
    # An entry for a variant not trained narrows nothing, so the paper profile takes overrides of its lists.
    dp2_only = load_config(PARAMS, "paper", ["train.variants=[org, dp2_fullbody]"])
    assert dp2_only.train.models == PAPER_GRID[:10]
    smaller = load_config(PARAMS, "paper", ["train.sizes=[n, m]"])
    assert [m for m in smaller.train.models if m[0] == "org"] == [("org", "yolov10", "n"), ("org", "yolov10", "m")]
    assert len(smaller.train.models) == 7


def test_a_profile_extends_another() -> None:
    raw = yaml.safe_load(PARAMS.read_text())
    raw["profiles"] |= {"short": {"extends": "paper-all-sizes", "train": {"epochs": 5}}}
    tree = resolve(raw, "short")
    assert "extends" not in tree
    assert (tree["train"]["epochs"], tree["train"]["imgsz"], tree["data"]["source"]) == (5, 640, "coco2017")
    assert tree["train"]["sizes_by_variant"]["blur"] == list("nsmlx")
    raw["profiles"]["short"]["extends"] = "huge"
    with pytest.raises(ConfigError, match=r"profile 'huge' \(extended by 'short'\) is not defined"):
        resolve(raw, "short")
    raw["profiles"] |= {"a": {"extends": "b"}, "b": {"extends": "a"}}
    with pytest.raises(ConfigError, match="profile 'a': 'extends' loops: a -> b -> a"):
        resolve(raw, "a")


def test_procedure_keys_validate() -> None:
    cfg = load_config(PARAMS, overrides=["evaluate.protocol=authors", "train.checkpoint=best"])
    assert (cfg.evaluate.protocol, cfg.train.checkpoint, cfg.train.val) == ("authors", "best", True)
    with pytest.raises(ConfigError, match="train: checkpoint: 'best' is chosen by validation fitness"):
        load_config(PARAMS, overrides=["train.checkpoint=best", "train.val=false"])
    with pytest.raises(ConfigError, match=r"train: extra: \['epochs', 'val'\] have their own train keys"):
        load_config(PARAMS, overrides=["train.extra={val: false, epochs: 3, nbs: 8}"])
    with pytest.raises(ConfigError, match=r"finetune\.fraction_of: Input should be 'train' or 'eligible'"):
        load_config(PARAMS, overrides=["finetune.fraction_of=subset"])
    with pytest.raises(ConfigError, match=r"evaluate\.protocol: Input should be 'coco' or 'authors'"):
        load_config(PARAMS, overrides=["evaluate.protocol=paper"])
    with pytest.raises(ConfigError, match=r"report\.cka_images: Input should be greater than or equal to 4"):
        load_config(PARAMS, overrides=["report.cka_images=3"])


def test_a_coco_folder_may_name_its_own_classes() -> None:
    sets = ["classes.comparison=[wheelchair, bicycle]"]
    with pytest.raises(ConfigError, match=r"classes\.comparison: not a COCO category: 'wheelchair'"):
        load_config(PARAMS, overrides=sets)
    cfg = load_config(PARAMS, overrides=[*sets, "data.source=coco-folder", "data.local_copy=/somewhere"])
    assert cfg.classes.comparison == ["wheelchair", "bicycle"]
    assert cfg.classes.lists()["classes.comparison"] == ["wheelchair", "bicycle"]
    assert cfg.source_root.as_posix() == "data/raw/coco-folder"


def test_set_overrides_parse_yaml_values() -> None:
    cfg = load_config(PARAMS, overrides=["train.epochs=7", "train.sizes=[n, s]", "finetune.base.size=s"])
    assert cfg.train.epochs == 7
    assert cfg.train.sizes == ["n", "s"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch=0", "params.yaml: train.batch: Input should be greater than 0 (got 0)"),
        ("train.bogus=1", "params.yaml: train.bogus: unknown key"),
        ("train.epochs=many", "params.yaml: train.epochs: Input should be a valid integer"),
        ("finetune.freeze.neck=[11, 30]", "params.yaml: finetune.freeze: neck: layer index outside 0..23"),
        ("classes.comparison=[bicycle, hoverboard]", "classes.comparison: not a COCO category: 'hoverboard'"),
        ("train.variants=[org, dp2_fullbody]", "params.yaml: train.variants: ['dp2_fullbody'] not among"),
        ("anonymize.methods=[sketch]", "params.yaml: anonymize.methods: unknown anonymization method 'sketch'"),
        (
            "anonymize.blur_face.upsample=9",
            "params.yaml: anonymize.blur_face.upsample: Input should be less than or equal to 4 (got 9)",
        ),
        (
            "anonymize.mask_face.detector=mtcnn",
            "params.yaml: anonymize.mask_face.detector: Input should be 'hog' or 'cnn'",
        ),
        ("anonymize.pixelate_face.sharpness=1", "params.yaml: anonymize.pixelate_face.sharpness: unknown key"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(PARAMS, overrides=[override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_face_only_method_is_named_like_any_method_and_the_face_vs_body_profile_loads() -> None:
    only_face = [
        "anonymize.methods=[blur_face]",
        "train.variants=[org, blur_face]",
        "evaluate.variants=[org, blur_face]",
    ]
    cfg = load_config(PARAMS, overrides=[*only_face, "finetune.variant=blur_face", "anonymize.blur_face.upsample=1"])
    assert cfg.anonymize.methods == ["blur_face"]
    settings = cfg.anonymize.settings("blur_face")
    # The detector defaults to the privacy audit's mini setting; the blur to the full-body method's.
    assert (settings.detector, settings.upsample) == ("hog", 1) and cfg.anonymize.settings("mask_face").upsample == 2
    assert (settings.sigma_fraction, settings.min_sigma) == (
        cfg.anonymize.blur.sigma_fraction,
        cfg.anonymize.blur.min_sigma,
    )
    both = load_config(PARAMS, profile="face-vs-body")
    assert both.anonymize.methods == ["blur", "pixelate", "mask", "blur_face", "pixelate_face", "mask_face"]
    assert both.train.variants == both.evaluate.variants == ["org", *both.anonymize.methods]


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ConfigError, match="profile 'huge' is not defined"):
        load_config(PARAMS, profile="huge")


def test_cli_config_show_prints_the_resolved_paper_config() -> None:
    result = CliRunner().invoke(app, ["config", "show", "--params", str(PARAMS), "--profile", "paper"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["profile"] == "paper"
    assert shown["train"]["sizes"] == ["n", "s", "m", "l", "x"]


def test_cli_reports_a_bad_override_and_exits_2() -> None:
    result = CliRunner().invoke(app, ["config", "show", "--params", str(PARAMS), "--set", "train.batch=0"])
    assert result.exit_code == 2
    assert "train.batch" in result.output
