"""KFP component: the study report (``anonbench report``), shown in the KFP UI."""

from kfp.dsl import HTML, Markdown, Output

from components.images import cpu_component


@cpu_component
def report(workspace: str, html: Output[HTML], markdown: Output[Markdown], matrix: Output[Markdown]) -> str:
    """Build ``reports/study.md`` and ``reports/study.html``; hand both and the evaluation matrix to the UI."""
    import shutil
    from pathlib import Path

    from anonbench.config import load_config
    from anonbench.workspace import PARAMS, evaluation_matrix, run_task

    reference = run_task(workspace, "report")
    folder = Path(workspace) / load_config(Path(workspace) / PARAMS).paths.reports
    shutil.copyfile(folder / "study.html", html.path)
    shutil.copyfile(folder / "study.md", markdown.path)
    Path(matrix.path).write_text(evaluation_matrix(workspace), encoding="utf-8")
    return reference
