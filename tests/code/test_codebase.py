"""codebase: a stage's code is its import closure; a change reaches the stages that import it and no other."""

from __future__ import annotations

import shutil
from pathlib import Path

from anonbench.codebase import SOURCE_ROOT, import_closure, stage_code_digest

STAGES = ("prepare", "train", "finetune", "evaluate", "drift", "relabel", "report")


def copy_of_the_code(target: Path) -> Path:
    shutil.copytree(SOURCE_ROOT / "anonbench", target / "anonbench", ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_a_change_to_the_report_reaches_only_the_report(tmp_path: Path) -> None:
    root = copy_of_the_code(tmp_path)
    before = {stage: stage_code_digest(stage, root) for stage in STAGES}
    assert before == {stage: stage_code_digest(stage) for stage in STAGES}  # where the code lies does not count
    changed = copy_of_the_code(tmp_path / "changed")
    report = changed / "anonbench/stages/report.py"
    report.write_text(report.read_text() + "# a fix\n")
    after = {stage: stage_code_digest(stage, changed) for stage in STAGES}
    assert [stage for stage in STAGES if after[stage] != before[stage]] == ["report"]


def test_shared_code_reaches_every_stage_that_imports_it(tmp_path: Path) -> None:
    root = copy_of_the_code(tmp_path)
    config = root / "anonbench/config.py"
    config.write_text(config.read_text() + "# a fix\n")
    assert all(stage_code_digest(stage, root) != stage_code_digest(stage) for stage in STAGES)
    closure = {p.relative_to(SOURCE_ROOT).as_posix() for p in import_closure("anonbench.stages.train")}
    assert {"anonbench/stages/train.py", "anonbench/yolo.py", "anonbench/config.py"} <= closure
    assert "anonbench/stages/report.py" not in closure
