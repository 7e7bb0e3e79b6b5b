"""Docker fixtures for the pipeline tests: a private daemon and the CPU image built from this tree.

A daemon needs root (docker/daemon.sh installs Debian's docker.io when it is missing). In CI
(``CI=true``) a missing daemon fails the tests; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = "/usr/bin/docker"


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
