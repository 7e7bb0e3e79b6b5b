"""KFP component: materialize the data source (``anonbench fetch``)."""

from components.images import cpu_component


@cpu_component
def fetch(workspace: str, download: bool) -> str:
    """Copy (or, with ``download``, download) the checksummed source into ``data/raw/<source>``."""
    from anonbench.workspace import run_stage

    return run_stage(workspace, "fetch", *(["--download"] if download else []))
