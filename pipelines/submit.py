"""Compile the study pipeline, upload it to a KFP endpoint and start a run; print the run's URL.

Usage (one line)::

    python -m pipelines.submit --host https://kfp.example.com --profile paper
        --set train.epochs=50 --workspace /mnt/anonbench/paper-2026-11
        [--settings my-cluster.yaml] [--token-env KFP_TOKEN] [--service-account anonbench-pipeline-runner]

The pipeline is uploaded once under its name; later submissions add a version
(named after the git commit and the time), so the KFP UI keeps the history.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from anonbench.config import ConfigError
from anonbench.tracking import git_commit
from pipelines.settings import DEFAULT_SETTINGS, load_settings
from pipelines.study import PIPELINE_NAME, compile_study


def submit(
    host: str,
    arguments: dict[str, Any],
    settings: Path = DEFAULT_SETTINGS,
    experiment: str = "anonbench",
    run_name: str | None = None,
    token: str | None = None,
    namespace: str | None = None,
    service_account: str | None = None,
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

    Returns:
        The URL of the run in the KFP UI.
    """
    import kfp

    stamp = time.strftime("%Y%m%d-%H%M%S")
    client = kfp.Client(host=host, existing_token=token, namespace=namespace)
    with tempfile.TemporaryDirectory() as tmp:
        # Compiled for this run's profile and overrides: they decide which fan-outs exist (no empty one).
        package = str(
            compile_study(
                load_settings(settings),
                Path(tmp) / "study.yaml",
                profile=arguments.get("profile", "mini"),
                overrides=arguments.get("overrides", []),
            )
        )
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
        )
    except ConfigError as err:  # the run's parameters, checked when the pipeline is compiled for them
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"run: {url}")


if __name__ == "__main__":
    main()
