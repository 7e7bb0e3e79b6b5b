"""KFP component: the study report (``anonbench report``)."""

from components.images import cpu_component


@cpu_component
def report(workspace: str) -> str:
    """Build ``reports/study.md`` and ``reports/study.html`` from the run's tracked results."""
    from anonbench.workspace import run_stage

    return run_stage(workspace, "report")
