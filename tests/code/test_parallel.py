"""Worker counts from what the process may use: CPU affinity, the cgroup CPU quota, the memory limit.

The affinity is this process's own (os.sched_setaffinity); the cgroup is a fake folder tree shaped
like the kernel's (/proc/self/cgroup and /sys/fs/cgroup, v2 and v1), since a test cannot set the
limits of the cgroup it runs in.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from anonbench.config import load_config
from anonbench.parallel import available_workers, cgroup_dirs, cpu_quota, memory_limit, usable_cpus

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30


@pytest.fixture
def one_cpu() -> Iterator[int]:
    """This process pinned to one CPU for the test (restored after)."""
    before = os.sched_getaffinity(0)
    cpu = min(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def cgroup_v2(tmp_path: Path, cpu_max: str | None = None, memory_max: str | None = None) -> tuple[Path, Path]:
    """A cgroup v2 tree where this process sits in kubepods/pod1/ctr; limits set on the pod's folder."""
    root = tmp_path / "cgroup"
    pod = root / "kubepods" / "pod1"
    (pod / "ctr").mkdir(parents=True)
    if cpu_max:
        (pod / "cpu.max").write_text(f"{cpu_max}\n")
    if memory_max:
        (pod / "memory.max").write_text(f"{memory_max}\n")
    (pod / "ctr" / "cpu.max").write_text("max 100000\n")  # the container sets none itself
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/kubepods/pod1/ctr\n")
    return root, proc


def test_affinity_limits_the_workers(one_cpu: int, tmp_path: Path) -> None:
    root, proc = cgroup_v2(tmp_path)
    assert usable_cpus(root, proc) == 1
    assert available_workers(GIB, root, proc) == 1


def test_a_cgroup_v2_cpu_quota_limits_the_workers(tmp_path: Path) -> None:
    root, proc = cgroup_v2(tmp_path, cpu_max="150000 100000")  # 1.5 CPUs: one whole worker
    assert cgroup_dirs(root, proc)[:2] == [root / "kubepods/pod1/ctr", root / "kubepods/pod1"]
    assert cpu_quota(cgroup_dirs(root, proc)) == 1.5
    assert usable_cpus(root, proc) == 1
    root, proc = cgroup_v2(tmp_path / "unlimited", cpu_max="max 100000")
    assert cpu_quota(cgroup_dirs(root, proc)) is None
    assert usable_cpus(root, proc) == len(os.sched_getaffinity(0))


def test_the_memory_limit_caps_the_workers(tmp_path: Path) -> None:
    # 96 CPUs but 4 GiB (below this machine's memory, which also caps the count)
    root, proc = cgroup_v2(tmp_path, cpu_max="9600000 100000", memory_max=str(4 * GIB))
    assert memory_limit(cgroup_dirs(root, proc)) == 4 * GIB
    cpus = len(os.sched_getaffinity(0))
    assert available_workers(2 * GIB, root, proc) == min(cpus, 2)
    assert available_workers(8 * GIB, root, proc) == 1  # never fewer than one


def test_cgroup_v1_limits_are_read_too(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    for controller in ("cpu", "memory"):
        (root / controller / "pod1").mkdir(parents=True)
    (root / "cpu" / "pod1" / "cpu.cfs_quota_us").write_text("200000\n")
    (root / "cpu" / "pod1" / "cpu.cfs_period_us").write_text("100000\n")
    (root / "memory" / "pod1" / "memory.limit_in_bytes").write_text(f"{3 * GIB}\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("4:memory:/pod1\n2:cpu,cpuacct:/pod1\n0::/\n")
    dirs = cgroup_dirs(root, proc)
    assert cpu_quota(dirs) == 2.0 and memory_limit(dirs) == 3 * GIB
    assert available_workers(GIB, root, proc) == min(2, len(os.sched_getaffinity(0)))


def test_no_cgroup_information_leaves_the_affinity(tmp_path: Path) -> None:
    assert cgroup_dirs(tmp_path, tmp_path / "missing") == []
    assert usable_cpus(tmp_path, tmp_path / "missing") == len(os.sched_getaffinity(0))


def test_config_workers_zero_follows_the_affinity_not_the_node(one_cpu: int) -> None:
    cfg = load_config(REPO / "params.yaml")
    assert cfg.workers == 0 and cfg.n_workers == 1  # os.cpu_count() would say every core of the machine
    assert load_config(REPO / "params.yaml", overrides=["workers=3"]).n_workers == 3
