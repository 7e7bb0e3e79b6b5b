"""Fixtures of the pipeline tests: a Docker daemon and the CPU image built from this tree, a real S3 store,
a headless browser (Debian's chromium, installed by tests/pipeline/browser/chromium.sh).

A daemon needs root (docker/daemon.sh installs Debian's docker.io when it is missing); so does the
S3 store, Ceph's RADOS Gateway (tests/pipeline/s3/start_rgw.sh installs Debian's packages). In CI
(``CI=true``) a missing one fails the tests; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = "/usr/bin/docker"
START_RGW = Path(__file__).with_name("s3") / "start_rgw.sh"
STOP_RGW = Path(__file__).with_name("s3") / "stop_rgw.sh"


def docker_unavailable(reason: str) -> None:
    """Fail in CI, where the images must build; skip elsewhere, saying why."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"docker is required in CI: {reason}")
    pytest.skip(reason)


def sh(*command: str | Path, **env: str) -> str:
    """Run a command from the repository root; its stdout, or a failure showing stderr."""
    proc = subprocess.run(
        [str(c) for c in command], cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc.stdout


@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    """``DOCKER_HOST`` of docker/daemon.sh's daemon, started for the session if it was not running."""
    if os.geteuid() != 0:
        docker_unavailable("starting a Docker daemon needs root")
    running = subprocess.run([REPO / "docker" / "daemon.sh", "host"], capture_output=True, check=False).returncode == 0
    started = subprocess.run([REPO / "docker" / "daemon.sh", "start"], capture_output=True, text=True, check=False)
    if started.returncode != 0:
        docker_unavailable(f"docker/daemon.sh start failed: {started.stderr.strip()[-2000:]}")
    host = started.stdout.strip().removeprefix("DOCKER_HOST=")
    previous = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = host  # for the Docker SDK that KFP's DockerRunner uses
    # A shared lock while the session uses it: docker/daemon.sh stop spares a daemon in use.
    with (Path(host.removeprefix("unix://")).parent / "users.lock").open("w") as users:
        fcntl.flock(users, fcntl.LOCK_SH)
        yield host
    if previous is None:
        os.environ.pop("DOCKER_HOST")
    else:
        os.environ["DOCKER_HOST"] = previous
    if not running:
        sh(REPO / "docker" / "daemon.sh", "stop")


@pytest.fixture(scope="session")
def cpu_image(docker_host: str) -> str:
    """The CPU image built from this tree on a locally made Debian base (layers cached between runs)."""
    base = sh(REPO / "docker" / "debian_base.sh", "local/debian:bookworm", DOCKER_HOST=docker_host).strip()
    built = sh(REPO / "docker" / "build.sh", "cpu", DOCKER_HOST=docker_host, BASE_IMAGE=base, DOCKER=DOCKER)
    return built.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real S3 server for the session: Ceph RADOS Gateway on 127.0.0.1 (tests/pipeline/s3/start_rgw.sh).

    Yields its ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``.
    """
    folder = tmp_path_factory.mktemp("rgw")
    result = subprocess.run(["bash", str(START_RGW), str(folder)], capture_output=True, text=True, timeout=300)
    try:
        if result.returncode != 0:
            message = f"RADOS Gateway did not start:\n{result.stdout}\n{result.stderr}"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        lines = (folder / "s3.env").read_text().splitlines()
        yield dict(line.split("=", 1) for line in lines)
    finally:
        subprocess.run(["bash", str(STOP_RGW), str(folder)], check=False)


def s3_bucket(server: dict[str, str], name: str) -> Any:
    """A new bucket on the test S3 server (boto3 resource)."""
    import boto3

    credentials = {
        "aws_access_key_id": server["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": server["AWS_SECRET_ACCESS_KEY"],
    }
    return boto3.resource("s3", endpoint_url=server["AWS_ENDPOINT_URL"], **credentials).create_bucket(Bucket=name)


def s3_objects(bucket: Any) -> dict[str, tuple[str, Any]]:
    """Every object of a bucket: key -> (ETag, last modified); unchanged when nothing was uploaded."""
    return {o.key: (o.e_tag, o.last_modified) for o in bucket.objects.all()}


FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--hide-scrollbars")  # fmt: skip


def browser_unavailable(reason: str) -> None:
    """Fail in CI, where the browser must install; skip elsewhere, saying why."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"chromium is required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> Callable[..., str]:
    """Run Debian's chromium headless with a throwaway profile; returns its stdout."""
    found = subprocess.run(
        [Path(__file__).with_name("browser") / "chromium.sh"], capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        browser_unavailable(found.stderr.strip()[-2000:] or "tests/pipeline/browser/chromium.sh failed")
    binary = found.stdout.strip()

    def run(*args: str) -> str:
        with tempfile.TemporaryDirectory() as profile:
            proc = subprocess.run(
                [binary, *FLAGS, f"--user-data-dir={profile}", *args],
                capture_output=True, text=True, timeout=180, check=False,
            )  # fmt: skip
        if proc.returncode != 0:
            pytest.fail(f"chromium exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc.stdout

    return run


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def mlflow_server(store_uri: str, folder: Path, *options: str, port: int | None = None) -> Iterator[str]:
    """A real ``mlflow server`` of this environment on ``store_uri``, on ``port`` (else a free one); yields its address.

    It runs in its own process group without job workers (its log in ``folder/server.log``), answers
    ``/health`` before the block starts, and the whole group is stopped after it.
    """
    port = port or free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", store_uri, *options]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = folder / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(command, cwd=folder, env=env, stdout=sink, stderr=sink, start_new_session=True)
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{address}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer /health:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield address
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
