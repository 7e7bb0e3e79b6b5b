"""The ``anonbench`` command line: one command per stage over the library.

Every stage command takes ``--params`` (default ``params.yaml``), ``--profile``
and repeatable ``--set dotted.key=value``, validates the parameters before any
work, and prints the paths it wrote. DVC stages and KFP components call these
same commands. Stage modules are imported inside each command so ``--help``
stays fast and the CPU image needs no torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
import yaml

from anonbench.config import Config, ConfigError, load_config
from anonbench.families import DEFAULT_FAMILY
from anonbench.offline import go_offline

app = typer.Typer(
    help="Measure what anonymizing people in images does to object detection.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the resolved parameters.", no_args_is_help=True)
app.add_typer(config_app, name="config")
model_app = typer.Typer(help="Trained models in the MLflow Model Registry.", no_args_is_help=True)
app.add_typer(model_app, name="model")

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


@contextmanager
def stage_errors(*kinds: type[Exception]) -> Iterator[None]:
    """Show a stage's expected failures (bad input, a missing earlier output) as one line, exit status 1.

    Args:
        kinds: Exception types beyond ``ValueError`` and ``FileNotFoundError`` that the stage raises for
            such failures; anything else is a bug and keeps its traceback.
    """
    expected: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, *kinds)
    try:
        yield
    except expected as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


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


@app.command("tracking-url")
def tracking_url(
    params: ParamsOption = Path("params.yaml"), profile: ProfileOption = None, set_: SetOption = None
) -> None:
    """Print the MLflow UI address of the experiment's runs table with anonbench's default columns."""
    from mlflow import MlflowClient

    from anonbench.tracking_ui import runs_url

    cfg = load(params, profile, set_)
    experiment = MlflowClient(cfg.tracking.resolved_uri).get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        where = f"{cfg.tracking.experiment!r} in {cfg.tracking.resolved_uri}"
        typer.echo(f"error: no experiment {where} yet (run a stage first, e.g. make demo)", err=True)
        raise typer.Exit(1)
    typer.echo(runs_url(cfg.report.tracking_ui, experiment.experiment_id))


@model_app.command("fetch")
def model_fetch(
    name: Annotated[str, typer.Option("--name", help="Registered model, e.g. anonbench-yolov10-n-org.")],
    version: Annotated[str, typer.Option("--version", help="Version number (or @alias).")],
    dest: Annotated[Path, typer.Option("--dest", help="Folder to download the weights into.")] = Path("."),
    params: ParamsOption = Path("params.yaml"),
    profile: ProfileOption = None,
    set_: SetOption = None,
) -> None:
    """Download a registered model version's weights (best.pt, last.pt) from the tracking store."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from anonbench.registry import fetch as fetch_version

    cfg = load(params, profile, set_)
    mlflow.set_tracking_uri(cfg.tracking.resolved_uri)
    with stage_errors(MlflowException):  # no such model or version
        wrote(fetch_version(name, version, dest))


@app.command()
def fetch(
    params: ParamsOption = Path("params.yaml"),
    profile: ProfileOption = None,
    set_: SetOption = None,
    download: Annotated[
        bool,
        typer.Option(envvar="ANONBENCH_DOWNLOAD", help="Allow downloading when no local copy is configured."),
    ] = False,
) -> None:
    """Materialize the data source in data/raw/<source>, every file checked against its checksum."""
    from anonbench.stages import fetch as stage

    cfg = load(params, profile, set_)
    with stage_errors(stage.FetchError, OSError):  # no source, a file that failed its checksum
        wrote(stage.run(cfg, download=download))


@app.command()
def prepare(params: ParamsOption = Path("params.yaml"), profile: ProfileOption = None, set_: SetOption = None) -> None:
    """Validate each split and write the index, per-class statistics and the co-occurrence figure."""
    from anonbench.stages import prepare as stage

    cfg = load(params, profile, set_)
    with stage_errors():  # bad input under the strict policy, an unreadable annotation file
        wrote(stage.run(cfg))


@app.command()
def anonymize(
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="blur, pixelate, mask, a plugin's or a container method (docs/plugins.md), dp2_fullbody, dp2_face",
        ),
    ],
    split: Annotated[list[str] | None, typer.Option("--split", help="Split to do (repeatable; default both).")] = None,
    shard: Annotated[str | None, typer.Option("--shard", help="Only shard i/n (0-based), e.g. 0/4.")] = None,
    prepare_job: Annotated[
        bool, typer.Option("--prepare-job", help="A container method: write its job folder and stop (KFP runs it).")
    ] = False,
    params: ParamsOption = Path("params.yaml"),
    profile: ProfileOption = None,
    set_: SetOption = None,
) -> None:
    """Anonymize the persons of each split into data/variants/<method>/ (resumes where a run stopped)."""
    from anonbench.anonymizers.container import ContainerError
    from anonbench.anonymizers.dp2 import Dp2Unavailable
    from anonbench.parallel import parse_shard
    from anonbench.stages import anonymize as stage

    cfg = load(params, profile, set_)
    with stage_errors(Dp2Unavailable, stage.AnonymizeError, ContainerError):
        wrote(stage.run(cfg, method, split, parse_shard(shard) if shard else None, prepare_job))


@app.command("run-job")
def run_job(
    job: Annotated[Path, typer.Argument(help="The job folder a container method is given (docs/plugins.md).")],
    method: Annotated[str, typer.Option("--method", help="An installed method, dp2_fullbody or dp2_face.")],
) -> None:
    """Do a container method's job with an installed method or DeepPrivacy2: anonbench's images as container methods."""
    from anonbench.anonymizers import container
    from anonbench.anonymizers.dp2 import Dp2Unavailable

    go_offline()
    with stage_errors(Dp2Unavailable, container.ContainerError):
        done = container.serve(job, method)
    typer.echo(f"{job}: {done['ok']} images ok, {done['error']} failed")


@app.command()
def methods(params: ParamsOption = Path("params.yaml"), profile: ProfileOption = None, set_: SetOption = None) -> None:
    """List the anonymization methods: installed, DeepPrivacy2's, and the container methods the parameters define.

    Each line: name, package (or image), deterministic, GPU, what it does (docs/plugins.md).
    """
    from anonbench.anonymizers import plugins

    try:
        installed = plugins.installed()
    except plugins.PluginError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    for name, method in installed.items():
        flags = f"deterministic={str(method.deterministic).lower()} gpu={str(method.gpu).lower()}"
        typer.echo(f"{name}\t{plugins.package(name)}\t{flags}\t{method.summary}")
    for name in plugins.names()[len(installed) :]:
        typer.echo(f"{name}\tanonbench\tDeepPrivacy2: its own environment, settings anonymize.dp2 (docs/anonymize.md)")
    if params.is_file():
        for name, defined in load(params, profile, set_).anonymize.containers.items():
            flags = f"deterministic={str(defined.deterministic).lower()} gpu={str(defined.gpu).lower()}"
            typer.echo(f"{name}\tcontainer {defined.image}\t{flags}\t{defined.summary}")


@app.command("dp2-weights")
def dp2_weights(
    source: Annotated[
        Path | None,
        typer.Option("--from", help="Folder holding DeepPrivacy2's checkpoint files (searched recursively)."),
    ] = None,
    to: Annotated[
        Path | None, typer.Option("--to", help="Weights folder (default: anonymize.dp2's, see docs/anonymize.md).")
    ] = None,
    method: Annotated[
        list[str] | None, typer.Option("--method", help="dp2_fullbody (default), dp2_face or detector (repeatable).")
    ] = None,
    download: Annotated[bool, typer.Option(help="Download the files from DP2's URLs instead of --from.")] = False,
    params: ParamsOption = Path("params.yaml"),
    profile: ProfileOption = None,
    set_: SetOption = None,
) -> None:
    """Check DeepPrivacy2's checkpoints by the md5 sums its configs carry; lay them out for TORCH_HOME/FVCORE_CACHE."""
    from anonbench.anonymizers.dp2 import Dp2Unavailable, install_weights
    from anonbench.anonymizers.dp2_weights import environment

    cfg = load(params, profile, set_)
    if (source is None) == (not download):
        typer.echo("error: give --from FOLDER, or --download to fetch the files from DP2's URLs", err=True)
        raise typer.Exit(2)
    target = to or cfg.anonymize.dp2.weights
    with stage_errors(Dp2Unavailable, OSError):  # no DP2 here, a missing or corrupt file
        wrote(install_weights(cfg.anonymize.dp2, method or ["dp2_fullbody"], source, target))
    typer.echo(" ".join(f"{key}={value}" for key, value in environment(target).items()))


MethodOption = Annotated[str, typer.Option("--variant", help="An anonymized variant (an anonymize --method).")]


@app.command()
def ssim(
    variant: MethodOption,
    split: Annotated[list[str] | None, typer.Option("--split", help="Split to measure (repeatable).")] = None,
    params: ParamsOption = Path("params.yaml"),
    profile: ProfileOption = None,
    set_: SetOption = None,
) -> None:
    """SSIM, luminance, contrast and structure of every image and ground-truth box into data/ssim/<variant>/."""
    from anonbench.stages import ssim as stage

    cfg = load(params, profile, set_)
    with stage_errors():  # bad input (strict policy), a missing variant, an unreadable annotation file
        wrote(stage.run(cfg, variant, splits=split))


VariantOption = Annotated[str, typer.Option("--variant", help="'org' or an anonymization method.")]


@app.command()
def privacy(
    variant: VariantOption,
    params: ParamsOption = Path("params.yaml"),
    profile: ProfileOption = None,
    set_: SetOption = None,
) -> None:
    """Attack a variant's identity (faces, linkage, inversion, appearance) into data/privacy/ and metrics/privacy/."""
    from anonbench.faces import FaceModelError
    from anonbench.stages import privacy as stage

    cfg = load(params, profile, set_)
    with stage_errors(FaceModelError):  # bad input (strict policy), a variant not made yet, models not installed
        wrote(stage.run(cfg, variant))


@app.command()
def export(
    variant: VariantOption,
    params: ParamsOption = Path("params.yaml"),
    profile: ProfileOption = None,
    set_: SetOption = None,
) -> None:
    """Write a variant in the Ultralytics YOLO layout: linked images, labels, dataset yaml, id map."""
    from anonbench.stages import export as stage

    cfg = load(params, profile, set_)
    with stage_errors():  # bad input (strict policy), a variant not made yet
        wrote(stage.run(cfg, variant))


@app.command()
def train(
    variant: VariantOption,
    size: Annotated[str, typer.Option("--size", help="Size: n, s, m, l or x (RT-DETR: l or x).")],
    family: Annotated[
        str, typer.Option("--family", help="Detector family: yolov10, yolov8, yolo11 or rtdetr.")
    ] = DEFAULT_FAMILY,
    params: ParamsOption = Path("params.yaml"),
    profile: ProfileOption = None,
    set_: SetOption = None,
) -> None:
    """Train a detector from scratch on an exported variant into models/<model id>/ (resumes if cut short).

    The model id is <variant>-<size> for YOLOv10, <variant>-<family>-<size> for another family.
    """
    from anonbench.stages import train as stage

    cfg = load(params, profile, set_)
    with stage_errors():  # an unknown variant, family or size, a size the family lacks, a variant not exported yet
        wrote(stage.run(cfg, variant, size, family))


@app.command()
def finetune(
    freeze: Annotated[str, typer.Option("--freeze", help="A freeze config name from finetune.freeze.")],
    params: ParamsOption = Path("params.yaml"),
    profile: ProfileOption = None,
    set_: SetOption = None,
) -> None:
    """Fine-tune the base model on the anonymized subset with one freeze config into models/ft-<name>/."""
    from anonbench.stages import finetune as stage

    cfg = load(params, profile, set_)
    with stage_errors():  # an unknown config, a missing layer, no base model yet
        wrote(stage.run(cfg, freeze))


@app.command()
def evaluate(
    model: Annotated[
        str, typer.Option("--model", help="Model id: a folder under models/: org-n, org-yolov8-n, ft-neck.")
    ],
    on: Annotated[str, typer.Option("--on", help="Evaluation variant: 'org' or an anonymization method.")],
    params: ParamsOption = Path("params.yaml"),
    profile: ProfileOption = None,
    set_: SetOption = None,
) -> None:
    """Score a trained model on a variant's validation split with the COCO protocol into metrics/eval/."""
    from anonbench.stages import evaluate as stage

    cfg = load(params, profile, set_)
    with stage_errors():  # no such model or variant yet, bad input under the strict policy
        wrote(stage.run(cfg, model, on))


@app.command()
def relabel(
    variant: MethodOption,
    reviewed: Annotated[
        Path | None,
        typer.Option("--reviewed", help="A reviewed export (Label Studio JSON or CVAT COCO) of the val proposals."),
    ] = None,
    params: ParamsOption = Path("params.yaml"),
    profile: ProfileOption = None,
    set_: SetOption = None,
) -> None:
    """Propose stale-label fixes for a variant, build the corrected ground truth, rescore every model on it."""
    from anonbench.stages import relabel as stage

    cfg = load(params, profile, set_)
    with stage_errors():  # no ssim table yet, a review that does not fit
        wrote(stage.run(cfg, variant, reviewed=reviewed))


@app.command()
def drift(
    variant: MethodOption,
    params: ParamsOption = Path("params.yaml"),
    profile: ProfileOption = None,
    set_: SetOption = None,
) -> None:
    """Linear CKA per YOLOv10 layer of the Org model between original and anonymized val images."""
    from anonbench.stages import drift as stage

    cfg = load(params, profile, set_)
    with stage_errors():  # no Org model yet, too few anonymized images
        wrote(stage.run(cfg, variant))


@app.command()
def report(params: ParamsOption = Path("params.yaml"), profile: ProfileOption = None, set_: SetOption = None) -> None:
    """Build reports/study.md and the self-contained reports/study.html answering Q1-Q8, logged to MLflow."""
    from anonbench.stages import report as stage

    cfg = load(params, profile, set_)
    wrote(stage.run(cfg))


@app.command()
def publish(
    target: Annotated[
        str, typer.Option("--target", help="source, prepared, models or an anonymization method (its variant).")
    ],
    params: ParamsOption = Path("params.yaml"),
    profile: ProfileOption = None,
    set_: SetOption = None,
) -> None:
    """In a KFP study workspace: version a dataset with DVC, push it to publish.remote, store its pointer there."""
    from anonbench.stages import publish as stage

    cfg = load(params, profile, set_)
    with stage_errors(stage.PublishError):
        wrote(stage.run(cfg, target))


@app.command()
def pull(
    run: Annotated[str, typer.Argument(help="The published run: its workspace folder's name (or publish.run).")],
    names: Annotated[
        list[str] | None, typer.Argument(help="What to fetch (dp2_fullbody, blur, models, ...); default all.")
    ] = None,
    remote: Annotated[str, typer.Option("--remote", help="This repository's DVC remote the run pushed to.")] = "s3",
) -> None:
    """Fetch a published run's anonymized datasets into published/<run>/ of this clone (dvc pull of its pointers)."""
    from anonbench.stages import publish as stage

    go_offline()
    with stage_errors(stage.PublishError):
        wrote(stage.pull(run, names or [], remote))


@app.command()
def preflight(
    workspace: Annotated[Path, typer.Option("--workspace", help="The run's folder (created if missing).")] = Path("."),
    check: Annotated[
        list[str] | None,
        typer.Option("--check", help="workspace, s3, mlflow, dp2-weights or gpu-memory (repeatable; default all)."),
    ] = None,
    access_mode: Annotated[
        str, typer.Option("--access-mode", help="The workspace claim's access mode (ReadWriteMany, ReadWriteOnce).")
    ] = "ReadWriteMany",
    nodes: Annotated[int, typer.Option("--nodes", min=1, help="How many nodes the run's tasks may land on.")] = 1,
    gpu_memory: Annotated[
        list[str] | None,
        typer.Option("--gpu-memory", help="KIND=GiB: memory of one GPU of a node class, e.g. train=80 (repeatable)."),
    ] = None,
    publishes: Annotated[bool, typer.Option("--publish", help="The run publishes: a DVC remote must be set.")] = False,
    params: ParamsOption = Path("params.yaml"),
    profile: ProfileOption = None,
    set_: SetOption = None,
) -> None:
    """Check in seconds what would fail a run after hours: workspace, S3, MLflow, DP2 weights, GPU memory."""
    from anonbench.preflight import CHECKS, Cluster, run_checks

    cfg = load(params, profile, set_)
    if access_mode not in ("ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"):
        typer.echo(f"error: --access-mode {access_mode!r}: expected ReadWriteMany, ReadWriteOnce or ReadWriteOncePod")
        raise typer.Exit(2)
    with stage_errors():
        node_gib = {kind: float(gib) for kind, gib in (item.split("=", 1) for item in gpu_memory or [])}
        cluster = Cluster(access_mode, nodes, node_gib, publishes)  # type: ignore[arg-type]
        outcomes = run_checks(cfg, workspace, check or CHECKS, cluster)
    for outcome in outcomes:
        typer.echo(outcome.line, err=not outcome.ok)
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


def main() -> None:
    """Entry point for ``python -m anonbench``."""
    app()
