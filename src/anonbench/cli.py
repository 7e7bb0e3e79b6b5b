"""The ``anonbench`` command line: one command per stage over the library.

Every stage command takes ``--params`` (default ``params.yaml``), ``--profile``
and repeatable ``--set dotted.key=value``, validates the parameters before any
work, and prints the paths it wrote. DVC stages and KFP components call these
same commands. Stage modules are imported inside each command so ``--help``
stays fast and the CPU image needs no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from anonbench.config import Config, ConfigError, load_config
from anonbench.offline import go_offline

app = typer.Typer(
    help="Measure what anonymizing people in images does to object detection.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the resolved parameters.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ParamsOption = Annotated[Path, typer.Option("--params", help="Parameter file.")]
ProfileOption = Annotated[str | None, typer.Option("--profile", help="Profile to apply (default: the file's).")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a parameter: dotted.key=value (repeatable).")
]


def load(params: Path, profile: str | None, overrides: list[str] | None) -> Config:
    """Go offline, then load and validate parameters; exit with one clear line when invalid."""
    go_offline()
    try:
        return load_config(params, profile, overrides)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


def wrote(paths: list[Path]) -> None:
    """Tell the user where a stage wrote its outputs."""
    for path in paths:
        typer.echo(f"wrote {path}")


@config_app.command("show")
def config_show(
    params: ParamsOption = Path("params.yaml"), profile: ProfileOption = None, set_: SetOption = None
) -> None:
    """Print the resolved, validated configuration as YAML."""
    cfg = load(params, profile, set_)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), nl=False)


@app.command()
def fetch(
    params: ParamsOption = Path("params.yaml"),
    profile: ProfileOption = None,
    set_: SetOption = None,
    download: Annotated[bool, typer.Option(help="Allow downloading when no local copy is configured.")] = False,
) -> None:
    """Materialize the data source in data/raw/<source>, every file checked against its checksum."""
    from anonbench.stages import fetch as stage

    cfg = load(params, profile, set_)
    wrote(stage.run(cfg, download=download))


@app.command()
def prepare(params: ParamsOption = Path("params.yaml"), profile: ProfileOption = None, set_: SetOption = None) -> None:
    """Validate each split and write the index, per-class statistics and the co-occurrence figure."""
    from anonbench.stages import prepare as stage

    cfg = load(params, profile, set_)
    wrote(stage.run(cfg))


def main() -> None:
    """Entry point for ``python -m anonbench``."""
    app()
