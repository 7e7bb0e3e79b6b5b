"""Compile the study pipeline, upload it to a KFP endpoint and start a run; print the run's URL.

Usage (one line)::

    python -m pipelines.submit --host https://kfp.example.com --profile paper
        --set train.epochs=50 --workspace /mnt/anonbench/paper-2026-11
        [--settings my-cluster.yaml] [--token-env KFP_TOKEN] [--service-account anonbench-pipeline-runner]
        [--local-images]

The pipeline is uploaded once under its name; later submissions add a version
(named after the git commit and the time), so the KFP UI keeps the history.

Before anything is uploaded, submit refuses a package whose images name no registry (no node
could pull them; ``--local-images`` where the nodes already hold them) and a KFP backend older
than :data:`MIN_BACKEND`, read from the API server's healthz (its ``tag_name``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from anonbench.config import ConfigError
from anonbench.tracking import git_commit
from components.images import registry
from pipelines.settings import DEFAULT_SETTINGS, load_settings
from pipelines.study import PIPELINE_NAME, compile_study

# gather joins fan-outs with dsl.Collected: backend 2.14.0 (kubeflow/pipelines#11725); a task after a
# whole ParallelFor needs 2.5 (#11627); the memory-backed /dev/shm of `shm` 2.3.
MIN_BACKEND = (2, 14, 0)
VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


class SubmitError(RuntimeError):
    """The package or the backend cannot run the study; the message is one line naming the fix."""


def unpullable_images(package: Path) -> list[str]:
    """The images of a compiled package that name no registry (a bare local name like ``anonbench-cpu:0.1.0``).

    Args:
        package: The compiled pipeline YAML.

    Returns:
        Those images, sorted: a node can pull none of them.
    """
    spec = next(yaml.safe_load_all(package.read_text(encoding="utf-8")))
    executors = spec["deploymentSpec"]["executors"].values()
    images = {e["container"]["image"] for e in executors if "container" in e}
    return sorted(image for image in images if registry(image) is None)


def check_images(package: Path) -> None:
    """Refuse images no node can pull.

    Raises:
        SubmitError: Naming the images and the fix.
    """
    bare = unpullable_images(package)
    if bare:
        raise SubmitError(
            f"images without a registry, no node can pull them: {', '.join(bare)}; build and push them with "
            "IMAGE_PREFIX=<registry>/<path>/ docker/build.sh --push cpu train dp2 (writes build/images.env), "
            "or pass --local-images if every node already holds them"
        )


def check_backend(client: Any) -> str:
    """Refuse a KFP backend older than :data:`MIN_BACKEND`.

    The API server answers ``/apis/v2beta1/healthz`` with ``tag_name`` (its release, KFP 2.17's
    ``backend/src/apiserver/main.go``), which the generated client model drops: read the raw answer.

    Args:
        client: A ``kfp.Client`` of the endpoint.

    Returns:
        The backend's release.

    Raises:
        SubmitError: For an older or unknown release.
    """
    raw = client.healthzs.healthz_service_get_healthz(_preload_content=False)
    tag = str(json.loads(raw.data or b"{}").get("tag_name", ""))
    found = VERSION.match(tag)
    minimum = ".".join(map(str, MIN_BACKEND))
    if found is None:
        raise SubmitError(
            f"KFP backend release unknown (healthz tag_name {tag!r}); the study needs {minimum} or newer "
            "(dsl.Collected); pass --skip-backend-check if you know it is"
        )
    if tuple(int(part) for part in found.groups()) < MIN_BACKEND:
        raise SubmitError(
            f"KFP backend {tag} is older than {minimum}, which the study needs (dsl.Collected, "
            "kubeflow/pipelines#11725): upgrade Kubeflow Pipelines"
        )
    return tag


def submit(
    host: str,
    arguments: dict[str, Any],
    settings: Path = DEFAULT_SETTINGS,
    experiment: str = "anonbench",
    run_name: str | None = None,
    token: str | None = None,
    namespace: str | None = None,
    service_account: str | None = None,
    local_images: bool = False,
    check_version: bool = True,
) -> str:
    """Compile, upload (or add a version) and start one run of the study.

    Args:
        host: KFP API endpoint, e.g. ``https://kfp.example.com`` (the UI is assumed at the same address).
        arguments: Pipeline parameters (workspace, profile, overrides, params_file, download).
        settings: Cluster settings compiled into the pipeline.
        experiment: KFP experiment the run belongs to (created if missing).
        run_name: Display name of the run; default ``<pipeline>-<profile>-<time>``.
        token: Bearer token for the endpoint, if it needs one.
        namespace: Kubeflow namespace (multi-user installs).
        service_account: Kubernetes service account of the run's pods.
        local_images: The nodes already hold the images: do not require a registry in their names.
        check_version: Refuse a backend older than :data:`MIN_BACKEND` (off only for a backend
            whose healthz names no release).

    Returns:
        The URL of the run in the KFP UI.

    Raises:
        SubmitError: Images without a registry, or a backend too old; nothing was uploaded.
    """
    import kfp

    stamp = time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory() as tmp:
        # Compiled for this run's profile and overrides: they decide which fan-outs exist (no empty one).
        compiled = compile_study(
            load_settings(settings),
            Path(tmp) / "study.yaml",
            profile=arguments.get("profile", "mini"),
            overrides=arguments.get("overrides", []),
        )
        if not local_images:
            check_images(compiled)
        client = kfp.Client(host=host, existing_token=token, namespace=namespace)
        if check_version:
            check_backend(client)
        package = str(compiled)
        pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
        if pipeline_id is None:  # first upload: the pipeline and its first version
            pipeline_id = client.upload_pipeline(package, pipeline_name=PIPELINE_NAME).pipeline_id
            version_id = client.list_pipeline_versions(pipeline_id).pipeline_versions[0].pipeline_version_id
        else:
            version = client.upload_pipeline_version(
                package, pipeline_version_name=f"{git_commit()[:12]}-{stamp}", pipeline_id=pipeline_id
            )
            version_id = version.pipeline_version_id
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    run = client.run_pipeline(
        experiment_id=experiment_id,
        job_name=run_name or f"{PIPELINE_NAME}-{arguments.get('profile', 'mini')}-{stamp}",
        pipeline_id=pipeline_id,
        version_id=version_id,
        params=arguments,
        service_account=service_account,
    )
    return f"{host.rstrip('/')}/#/runs/details/{run.run_id}"


def main() -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description="Submit the anonbench study pipeline to a KFP endpoint.")
    parser.add_argument("--host", required=True, help="KFP API endpoint")
    parser.add_argument("--workspace", help="run folder on the workspace volume (default: the pipeline's)")
    parser.add_argument("--profile", default="paper", help="params.yaml profile (default: paper)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="dotted.key=value, repeatable")
    parser.add_argument("--params-file", help="params file inside the image (default: the pipeline's)")
    parser.add_argument("--download", action="store_true", help="let fetch download the source")
    parser.add_argument("--settings", type=Path, default=DEFAULT_SETTINGS, help="cluster settings YAML")
    parser.add_argument("--experiment", default="anonbench", help="KFP experiment")
    parser.add_argument("--run-name", help="run display name")
    parser.add_argument("--namespace", help="Kubeflow namespace (multi-user installs)")
    parser.add_argument("--service-account", help="service account of the run's pods")
    parser.add_argument("--token-env", default="KFP_TOKEN", help="environment variable holding a bearer token")
    parser.add_argument("--local-images", action="store_true", help="the nodes hold the images: no registry needed")
    parser.add_argument(
        "--skip-backend-check", action="store_true", help="the backend's healthz names no release: do not check it"
    )
    args = parser.parse_args()
    arguments: dict[str, Any] = {"profile": args.profile, "overrides": args.overrides, "download": args.download}
    if args.workspace:
        arguments["workspace"] = args.workspace
    if args.params_file:
        arguments["params_file"] = args.params_file
    try:
        url = submit(
            args.host,
            arguments,
            settings=args.settings,
            experiment=args.experiment,
            run_name=args.run_name,
            token=os.environ.get(args.token_env) or None,
            namespace=args.namespace,
            service_account=args.service_account,
            local_images=args.local_images,
            check_version=not args.skip_backend_check,
        )
    except (ConfigError, SubmitError) as err:  # the run's parameters, checked when the pipeline is compiled for them
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"run: {url}")


if __name__ == "__main__":
    main()
