"""pipelines/submit.py against a fake KFP API server.

No KFP cluster can run here, so only the HTTP endpoint is faked: a small server on 127.0.0.1
that answers the KFP v2beta1 REST calls the real kfp.Client makes (health, pipelines,
upload, versions, experiments, runs) and records them. Everything on the client side is real.
Its healthz answers as KFP 2.17's API server does (``backend/src/apiserver/main.go``:
``commit_sha``, ``tag_name``, ``multi_user``), with the release a test gives it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from components.images import IMAGES
from pipelines.study import PIPELINE_NAME
from pipelines.submit import SubmitError, submit

REPO = Path(__file__).resolve().parents[2]
API = "/apis/v2beta1"
pytestmark = pytest.mark.filterwarnings("ignore:This client only works:FutureWarning")


class FakeKfp(ThreadingHTTPServer):
    """The KFP API's state: uploaded pipelines and versions, experiments, runs."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FakeKfpHandler)
        self.pipelines: dict[str, str] = {}  # name -> id
        self.packages: list[dict[str, Any]] = []  # uploaded pipeline specs, in order
        self.versions: list[tuple[str, str]] = []  # (pipeline id, version name)
        self.runs: list[dict[str, Any]] = []
        self.authorization: set[str | None] = set()  # Authorization headers seen
        self.release = "2.17.0"  # the backend's tag_name

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class FakeKfpHandler(BaseHTTPRequestHandler):
    server: FakeKfp

    def _reply(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _upload(self) -> dict[str, Any]:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
        form = BytesParser(policy=policy.HTTP).parsebytes(head + body)
        (part,) = [p for p in form.iter_parts() if p.get_param("name", header="content-disposition") == "uploadfile"]
        spec = next(yaml.safe_load_all(part.get_payload(decode=True)))
        self.server.packages.append(spec)
        return spec

    def do_GET(self) -> None:
        self.server.authorization.add(self.headers.get("Authorization"))
        url = urlparse(self.path)
        if url.path == f"{API}/pipelines":
            wanted = json.loads(parse_qs(url.query)["filter"][0])["predicates"][0]["stringValue"]
            found = [{"pipeline_id": pid, "display_name": n} for n, pid in self.server.pipelines.items() if n == wanted]
            self._reply({"pipelines": found} if found else {})
        elif url.path.startswith(f"{API}/pipelines/") and url.path.endswith("/versions"):
            pid = url.path.split("/")[-2]
            self._reply({"pipeline_versions": [{"pipeline_id": pid, "pipeline_version_id": f"{pid}-v1"}]})
        elif url.path.endswith("/healthz"):
            self._reply({"commit_sha": "4a3592cb", "tag_name": self.server.release, "multi_user": False})
        else:  # experiments (none yet)
            self._reply({})

    def do_POST(self) -> None:
        self.server.authorization.add(self.headers.get("Authorization"))
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == f"{API}/pipelines/upload":
            self._upload()
            pid = f"p{len(self.server.pipelines) + 1}"
            self.server.pipelines[query["name"]] = pid
            self._reply({"pipeline_id": pid, "display_name": query["name"]})
        elif url.path == f"{API}/pipelines/upload_version":
            self._upload()
            self.server.versions.append((query["pipelineid"], query["name"]))
            version = f"v{len(self.server.versions) + 1}"
            self._reply({"pipeline_id": query["pipelineid"], "pipeline_version_id": version})
        elif url.path == f"{API}/experiments":
            self._reply({"experiment_id": "e1", **json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
        elif url.path == f"{API}/runs":
            run = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.server.runs.append(run)
            self._reply({"run_id": f"r{len(self.server.runs)}"})
        else:
            self.send_error(404)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def kfp_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKfp]:
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client keeps a context file under ~/.config
    server = FakeKfp()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_submit_uploads_the_study_and_starts_a_run_with_the_arguments(kfp_api: FakeKfp) -> None:
    arguments = {"profile": "paper", "overrides": ["train.epochs=50"], "workspace": "/mnt/anonbench/p1"}

    url = submit(
        kfp_api.url, arguments, experiment="study", service_account="anonbench-pipeline-runner", local_images=True
    )

    assert url == f"{kfp_api.url}/#/runs/details/r1"
    (package,) = kfp_api.packages
    assert package["pipelineInfo"]["name"] == PIPELINE_NAME
    assert set(package["root"]["inputDefinitions"]["parameters"]) >= set(arguments)
    (run,) = kfp_api.runs
    assert run["runtime_config"]["parameters"] == arguments
    assert run["pipeline_version_reference"] == {"pipeline_id": "p1", "pipeline_version_id": "p1-v1"}
    assert run["experiment_id"] == "e1" and run["service_account"] == "anonbench-pipeline-runner"


def test_a_second_submit_adds_a_version_instead_of_a_new_pipeline(kfp_api: FakeKfp) -> None:
    submit(kfp_api.url, {"profile": "mini"}, local_images=True)
    url = submit(kfp_api.url, {"profile": "paper"}, local_images=True)

    assert url.endswith("/#/runs/details/r2")
    assert list(kfp_api.pipelines) == [PIPELINE_NAME] and len(kfp_api.packages) == 2
    # Each version is compiled for its run's profile: the mini study has no DeepPrivacy2 branch at all.
    mini, paper = kfp_api.packages
    assert "comp-anonymize-shard" not in mini["components"] and "comp-anonymize-shard" in paper["components"]
    ((pipeline_id, _),) = kfp_api.versions
    assert kfp_api.runs[1]["pipeline_version_reference"] == {"pipeline_id": pipeline_id, "pipeline_version_id": "v2"}


@pytest.mark.parametrize("release", ["2.5.0", "2.13.1", "unknown"])
def test_submit_refuses_a_backend_older_than_the_minimum(kfp_api: FakeKfp, release: str) -> None:
    kfp_api.release = release

    with pytest.raises(SubmitError, match="KFP backend") as refused:
        submit(kfp_api.url, {"profile": "mini"}, local_images=True)

    assert "2.14.0" in str(refused.value) and "\n" not in str(refused.value)
    assert kfp_api.packages == [] and kfp_api.runs == []


OPTIONS = ["--set", "train.epochs=2", "--set", "train.sizes=[n,m]", "--workspace", "/mnt/anonbench/x"]
DIGEST = "sha256:" + "ab" * 32
# As build/images.env names images that build.sh --push pushed: tag and the registry's digest.
PUSHED = {f"ANONBENCH_{n.upper()}_IMAGE": f"registry.example.org/vision/anonbench-{n}:0.1.0@{DIGEST}" for n in IMAGES}


def test_submit_command_prints_the_run_url_and_pods_pull_by_digest(kfp_api: FakeKfp, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.submit", "--host", kfp_api.url, "--profile", "paper", *OPTIONS],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **PUSHED, "HOME": str(tmp_path), "KFP_TOKEN": "t0ken"},
        check=True,
    )

    assert f"run: {kfp_api.url}/#/runs/details/r1" in result.stdout.splitlines()
    assert kfp_api.authorization == {"Bearer t0ken"}
    (package,) = kfp_api.packages
    executors = package["deploymentSpec"]["executors"].values()
    assert {e["container"]["image"] for e in executors} == set(PUSHED.values())  # paper: cpu, train, dp2
    assert kfp_api.runs[0]["runtime_config"]["parameters"] == {
        "profile": "paper",
        "overrides": ["train.epochs=2", "train.sizes=[n,m]"],
        "download": False,
        "workspace": "/mnt/anonbench/x",
    }


def test_submit_command_refuses_invalid_parameters_before_uploading(kfp_api: FakeKfp, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.submit",
            "--host",
            kfp_api.url,
            "--profile",
            "paper",
            "--set",
            "train.sizes=[n]",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **PUSHED, "HOME": str(tmp_path)},
    )

    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "finetune.base.size" in result.stderr
    assert kfp_api.packages == [] and kfp_api.runs == []


def test_submit_from_a_fresh_clone_refuses_images_without_a_registry(kfp_api: FakeKfp, tmp_path: Path) -> None:
    # A fresh clone: the files git would check out (tracked and not ignored), no build/images.env.
    clone = tmp_path / "clone"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True
    )
    for name in listed.stdout.splitlines():
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    assert not (clone / "build").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANONBENCH_") or not k.endswith("_IMAGE")}
    env |= {"HOME": str(tmp_path), "PYTHONPATH": f"{clone / 'src'}{os.pathsep}{clone}"}

    result = subprocess.run(
        [sys.executable, "-m", "pipelines.submit", "--host", kfp_api.url, "--profile", "mini"],
        cwd=clone,
        capture_output=True,
        text=True,
        env=env,
    )

    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: images without a registry") and "anonbench-cpu:" in line
    assert "docker/build.sh --push" in line and "--local-images" in line
    assert kfp_api.packages == [] and kfp_api.runs == []
