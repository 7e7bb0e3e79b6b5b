"""Anonymizer plugins: discovery through the entry point group, their parameter schemas, the unknown-name line.

The example plugin (examples/anonbench-plugin-inpaint) is installed in the test environment by ``make
install``; its absence fails these tests. Broken plugins are real installed distributions too: a
``*.dist-info`` folder with an ``entry_points.txt`` put on ``sys.path``, as pip would leave it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from anonbench.anonymizers import plugins
from anonbench.anonymizers.masks import person_masks
from anonbench.cli import app
from anonbench.config import Config, ConfigError, load_config
from anonbench.stages import anonymize
from tests.conftest import PARAMS, cli_args

WITH_INPAINT = ("anonymize.methods=[inpaint, mask]", "train.variants=[org, inpaint, mask]",
                "evaluate.variants=[org, inpaint, mask]")  # fmt: skip


@pytest.fixture
def fresh_registry() -> Iterator[None]:
    """The registry is loaded once per process: forget it before and after a test that changes what is installed."""
    plugins.installed.cache_clear()
    yield
    plugins.installed.cache_clear()


def install(root: Path, name: str, module: str, source: str, target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Put a distribution ``name`` publishing entry point ``anonbench.anonymizers: <target>`` on ``sys.path``.

    The module is imported afresh (an earlier test's module of that name is forgotten, and this one after).
    """
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setitem(sys.modules, module, None)  # undone last: whatever the test imported is forgotten
    monkeypatch.delitem(sys.modules, module)  # so the entry point imports the module written here
    (root / f"{module}.py").write_text(source)
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[anonbench.anonymizers]\n{target} = {module}:METHOD\n")


def test_the_built_ins_and_the_example_plugin_are_discovered() -> None:
    installed = plugins.installed()
    assert set(plugins.BUILT_IN) <= set(installed), "anonbench's own entry points: reinstall (make install)"
    assert "inpaint" in installed, "the example plugin is not installed: make install (examples/anonbench-plugin-*)"
    assert {plugins.package(m).split()[0] for m in plugins.BUILT_IN} == {"anonbench"}
    assert plugins.package("inpaint") == "anonbench-plugin-inpaint 0.1.0"
    inpaint = installed["inpaint"]
    assert (inpaint.deterministic, inpaint.gpu) == (True, False)
    assert plugins.names()[-2:] == ["dp2_fullbody", "dp2_face"]
    listed = CliRunner().invoke(app, ["methods"])
    assert listed.exit_code == 0 and [line.split("\t")[0] for line in listed.output.splitlines()] == plugins.names()
    assert "inpaint\tanonbench-plugin-inpaint 0.1.0\tdeterministic=true gpu=false\t" in listed.output


def test_the_example_plugin_paints_only_the_persons_and_reruns_identically() -> None:
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    square = [[10.0, 10.0, 40.0, 10.0, 40.0, 40.0, 10.0, 40.0]]
    masks = person_masks([{"category_id": 1, "segmentation": square, "bbox": [10, 10, 30, 30]}], 1, 60, 80, 2, 8)
    inpaint = plugins.get("inpaint")
    params = inpaint.settings({"radius": 3})
    out, region, counts = inpaint(image, masks.persons, params, np.random.default_rng(1))
    assert counts == {}  # it declares no counts of its own
    assert (region == masks.region()).all()
    assert (out[~region] == image[~region]).all()
    assert (out[region] != image[region]).any(axis=1).mean() > 0.9  # noise inpainted from noise: nearly all moves
    again = inpaint(image, masks.persons, params, np.random.default_rng(2)).image
    assert (again == out).all()


def test_a_plugin_section_is_validated_by_its_schema_when_params_load() -> None:
    cfg = load_config(PARAMS, overrides=[*WITH_INPAINT, "anonymize.inpaint.radius=7"])
    assert cfg.anonymize.settings("inpaint").model_dump() == {"radius": 7, "algorithm": "telea"}
    defaults = load_config(PARAMS, overrides=list(WITH_INPAINT))
    assert defaults.anonymize.settings("inpaint").model_dump() == {"radius": 5, "algorithm": "telea"}
    for override, message in (
        ("anonymize.inpaint.radius=0", "params.yaml: anonymize.inpaint.radius: Input should be greater than or equal"
         " to 1 (got 0)"),
        ("anonymize.inpaint.colour=1", "params.yaml: anonymize.inpaint.colour: unknown key"),
        ("anonymize.inpaint.algorithm=fast", "params.yaml: anonymize.inpaint.algorithm: Input should be 'telea' or "
         "'ns' (got 'fast')"),
        ("anonymize.sketch={}", "params.yaml: anonymize.sketch: unknown key (not a setting, nor an installed"),
    ):  # fmt: skip
        with pytest.raises(ConfigError) as err:
            load_config(PARAMS, overrides=[*WITH_INPAINT, override])
        assert message in str(err.value) and "\n" not in str(err.value), override


def test_an_unknown_method_fails_with_one_line_listing_the_installed(make_config: Callable[..., Config]) -> None:
    expected = (
        "unknown anonymization method 'sketch'; installed: blur, blur_face, inpaint, mask, mask_face, pixelate, "
        "pixelate_face, dp2_fullbody, dp2_face"
    )
    with pytest.raises(ConfigError, match=expected):
        load_config(PARAMS, overrides=["anonymize.methods=[sketch]"])
    cfg = make_config()
    with pytest.raises(plugins.UnknownMethod, match=expected):
        anonymize.run(cfg, "sketch")
    result = CliRunner().invoke(app, ["anonymize", "--method", "sketch", *cli_args(cfg)])
    assert result.exit_code == 1 and result.output.strip().splitlines() == [f"error: {expected} (docs/plugins.md)"]


GOOD = """
from anonbench.anonymizers.plugins import Anonymizer, Painted, Settings
class Params(Settings):
    strength: int = 1
METHOD = Anonymizer("{name}", lambda image, persons, params, rng: Painted(image, image[..., 0] > 0), Params)
"""


@pytest.mark.parametrize(
    ("source", "entry", "message"),
    [
        (GOOD.format(name="other"), "swirl", "the Anonymizer is named 'other'; the entry point must carry its name"),
        (GOOD.format(name="org"), "org", "'org' is reserved"),
        (GOOD.format(name="blur"), "blur", "another package publishes that name too"),
        ("METHOD = len\n", "swirl", "is a builtin_function_or_method, not an anonbench.anonymizers.plugins.Anonymizer"),
        ("import no_such_module\n", "swirl", "failed to load: ModuleNotFoundError"),
        (GOOD.format(name="swirl").replace("int = 1", "int"), "swirl", "every field of Params needs a default"),
    ],
)
def test_a_broken_plugin_fails_the_parameter_load_naming_it(
    source: str, entry: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: None
) -> None:
    install(tmp_path, "broken-plugin", "broken_plugin", source, entry, monkeypatch)
    with pytest.raises(ConfigError) as err:
        load_config(PARAMS)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_plugin_that_breaks_the_return_contract_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: None
) -> None:
    install(tmp_path, "swirl-plugin", "swirl_plugin", GOOD.format(name="swirl"), "swirl", monkeypatch)
    swirl = plugins.get("swirl")
    assert plugins.package("swirl") == "swirl-plugin 0.1"
    image = np.ones((4, 5, 3), dtype=np.uint8)
    assert swirl(image, [], swirl.params(), np.random.default_rng(0)).region.all()
    broken = plugins.Anonymizer("swirl", lambda *_: (image[:2], image[..., 0] > 0), swirl.params)
    with pytest.raises(plugins.PluginError, match=r"image \(2, 5, 3\) uint8, expected \(4, 5, 3\) uint8"):
        broken(image, [], swirl.params(), np.random.default_rng(0))
    assert sys.modules["swirl_plugin"].METHOD is swirl
