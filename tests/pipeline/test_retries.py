"""What Argo really retries for the compiled paper pipeline, under KFP 2.17's own Argo defaults.

No cluster here: the compiled package is read, each task's retry turned into the Argo
``retryStrategy`` the KFP 2.17 backend writes for it, and that merged with the workflow's
``templateDefaults`` as Argo merges them (the template's own fields win, the rest comes from the
defaults). Sources, tag 2.17.0 (kubeflow/pipelines@4a3592cb):

- ``backend/src/v2/compiler/argocompiler/container.go`` (``getTaskRetryStrategyFromInput``): the
  executor template gets ``limit`` and ``backoff`` from the task's ``retryPolicy`` and no
  ``retryPolicy`` of its own; the pipeline spec's ``RetryPolicy`` has no field for one
  (``max_retry_count``, ``backoff_*`` only), so no pipeline can name it;
- ``manifests/kustomize/third-party/argo/base/workflow-controller-configmap-patch.yaml``, lines
  50-59: ``workflowDefaults.spec.templateDefaults.retryStrategy: {limit: '2', retryPolicy: OnError}``.

Argo's policies (argo-workflows ``docs/retries.md``): ``OnError`` retries nodes in phase Error
(the pod deleted or lost with its node, an init or wait container failing), ``OnFailure``
nodes in phase Failed (the main container exited non-zero, was OOM-killed or ran past its
``activeDeadlineSeconds``), ``Always`` both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.settings import load_settings
from pipelines.study import compile_study

REPO = Path(__file__).resolve().parents[2]
PATCH = REPO / "infra" / "argo-retry-policy.patch.json"
# KFP 2.17.0's manifest, as quoted above.
KFP_WORKFLOW_DEFAULTS = {
    "spec": {
        "ttlStrategy": {"secondsAfterCompletion": 3600, "secondsAfterSuccess": 3600, "secondsAfterFailure": 3600},
        "templateDefaults": {"retryStrategy": {"limit": "2", "retryPolicy": "OnError"}},
    }
}
RETRIED_PHASES = {
    "OnError": {"Error"},
    "OnFailure": {"Failed"},
    "OnTransientError": {"Error"},
    "Always": {"Error", "Failed"},
}
# The node phase Argo gives each way a task can end badly.
ENDINGS = {"OOM kill": "Failed", "non-zero exit": "Failed", "time limit": "Failed", "node lost": "Error"}


def merged(template: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A template over Argo's ``templateDefaults``: its own fields win, maps merge key by key."""
    out = dict(defaults)
    for key, value in template.items():
        out[key] = merged(value, out[key]) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def argo_strategy(policy: dict[str, Any]) -> dict[str, Any]:
    """The executor template's ``retryStrategy`` KFP 2.17's backend writes for a task's ``retryPolicy``.

    Durations become whole seconds (``Duration.Seconds``), the factor and the count strings.
    """
    seconds = {key: policy[key].removesuffix("s") for key in ("backoffDuration", "backoffMaxDuration")}
    backoff = {"factor": str(policy["backoffFactor"]), "duration": seconds["backoffDuration"]}
    return {"limit": str(policy["maxRetryCount"]), "backoff": {**backoff, "maxDuration": seconds["backoffMaxDuration"]}}


def task_policies(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of every DAG (the root's and the inner pipelines') that runs a container: its ``retryPolicy``."""
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    containers = {name for name, c in spec["components"].items() if "executorLabel" in c}
    found = {}
    for dag in dags:
        for name, task in dag["tasks"].items():
            if task["componentRef"]["name"] in containers:
                found[name] = task.get("retryPolicy", {})
    return found


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    package = compile_study(load_settings(), tmp_path_factory.mktemp("retries") / "paper.yaml", profile="paper")
    return next(yaml.safe_load_all(package.read_text()))


def effective(policy: dict[str, Any], workflow_defaults: dict[str, Any]) -> dict[str, Any]:
    return merged({"retryStrategy": argo_strategy(policy)}, workflow_defaults["spec"]["templateDefaults"])[
        "retryStrategy"
    ]


def test_every_task_asks_for_the_settings_retries(paper: dict[str, Any]) -> None:
    retries = load_settings().retries
    policies = task_policies(paper)
    assert {"preflight", "plan", "train", "evaluate", "anonymize-shard"} <= set(policies)
    for name, policy in policies.items():
        assert policy == {
            "maxRetryCount": retries.count,
            "backoffDuration": "60s",
            "backoffFactor": retries.factor,
            "backoffMaxDuration": "3600s",
        }, name


def test_under_kfps_own_defaults_only_lost_pods_are_retried(paper: dict[str, Any]) -> None:
    # What docs/orchestration.md ("Retries") states: Argo retries a task whose pod was lost, never an
    # OOM kill, a non-zero exit or a time limit, whatever the settings say.
    for name, policy in task_policies(paper).items():
        strategy = effective(policy, KFP_WORKFLOW_DEFAULTS)
        assert strategy["retryPolicy"] == "OnError" and strategy["limit"] == "2", name
        retried = {ending for ending, phase in ENDINGS.items() if phase in RETRIED_PHASES[strategy["retryPolicy"]]}
        assert retried == {"node lost"}, name


def test_with_infras_patch_oom_kills_and_lost_pods_are_retried(paper: dict[str, Any]) -> None:
    # kubectl -n kubeflow patch configmap workflow-controller-configmap --type merge --patch-file <PATCH>
    patch = json.loads(PATCH.read_text())
    defaults = yaml.safe_load(patch["data"]["workflowDefaults"])
    assert defaults["spec"]["ttlStrategy"] == KFP_WORKFLOW_DEFAULTS["spec"]["ttlStrategy"]  # only the policy changes
    for name, policy in task_policies(paper).items():
        strategy = effective(policy, defaults)
        assert strategy["retryPolicy"] == "Always" and strategy["backoff"]["duration"] == "60", name
        retried = {ending for ending, phase in ENDINGS.items() if phase in RETRIED_PHASES[strategy["retryPolicy"]]}
        assert retried == set(ENDINGS), name
