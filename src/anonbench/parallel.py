"""Per-image work over the CPUs a process may use, with a progress bar, and sharding over pods or GPUs."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def cgroup_dirs(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> list[Path]:
    """The cgroup folders whose CPU and memory limits apply to this process, innermost first.

    From ``/proc/self/cgroup``: the unified (v2) folder, and for cgroup v1 the ``cpu`` and
    ``memory`` controllers' folders, each with its ancestors up to the hierarchy's root: a limit set
    on any of them (the container's, the pod's) applies. In a container with its own cgroup
    namespace the path is ``/`` and the folder is the mount itself.

    Args:
        root: Where the cgroup hierarchy is mounted.
        proc_cgroup: The process's cgroup membership file.

    Returns:
        The folders that exist; empty outside Linux cgroups.
    """
    try:
        lines = proc_cgroup.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    found: list[Path] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        bases = [root] if controllers == "" else [root / c for c in controllers.split(",") if c in ("cpu", "memory")]
        for base in bases:
            folder = base / path.strip().lstrip("/")
            found += [d for d in (folder, *folder.parents) if d.is_dir() and (d == base or base in d.parents)]
    return list(dict.fromkeys(found))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def cpu_quota(dirs: list[Path]) -> float | None:
    """CPUs the cgroup quota allows (quota / period), the smallest over ``dirs``; None if unlimited.

    Reads ``cpu.max`` (v2: ``"<quota> <period>"`` or ``"max <period>"``) and
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (v1: quota -1 is unlimited).
    """
    quotas = []
    for folder in dirs:
        text = _read(folder / "cpu.max")
        if text and not text.startswith("max"):
            quota, period = text.split()
            quotas.append(int(quota) / int(period))
        v1_quota, v1_period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if v1_quota and v1_period and int(v1_quota) > 0:
            quotas.append(int(v1_quota) / int(v1_period))
    return min(quotas, default=None)


def memory_limit(dirs: list[Path]) -> int | None:
    """Bytes the cgroup allows (``memory.max``, v1 ``memory.limit_in_bytes``), the smallest over ``dirs``."""
    limits = []
    for folder in dirs:
        for name in ("memory.max", "memory.limit_in_bytes"):
            text = _read(folder / name)
            if text and text != "max":
                limits.append(int(text))
    return min(limits, default=None)


def usable_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup CPU quota (at least 1).

    ``os.cpu_count()`` counts the node's cores: in a pod limited to 4 CPUs on a 96-core node it says 96.
    """
    cpus = len(os.sched_getaffinity(0))
    quota = cpu_quota(cgroup_dirs(root, proc_cgroup))
    if quota is not None:
        cpus = min(cpus, math.floor(quota))
    return max(1, cpus)


def available_workers(memory_per_worker: int, root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """Worker processes that fit: the usable CPUs, and no more than the memory limit holds at ``memory_per_worker``.

    Args:
        memory_per_worker: Bytes one worker may take (params ``worker_memory_gb``).
        root: Where the cgroup v2 hierarchy is mounted.
        proc_cgroup: The process's cgroup membership file.

    Returns:
        At least 1.
    """
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = memory_limit(cgroup_dirs(root, proc_cgroup))
    memory = min(physical, limit) if limit is not None else physical
    return max(1, min(usable_cpus(root, proc_cgroup), memory // memory_per_worker))


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``i/n`` (0-based shard ``i`` of ``n``).

    Raises:
        ValueError: If the text is not ``i/n`` with ``0 <= i < n``.
    """
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected i/n, for example 0/4") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n")
    return index, count


def take_shard(items: Sequence[T], shard: tuple[int, int]) -> list[T]:
    """Every n-th item starting at i: shards are disjoint, cover everything and stay balanced."""
    index, count = shard
    return list(items[index::count])


def map_with_progress(
    fn: Callable[[T], R], items: Sequence[T], workers: int, desc: str, unit: str = "img"
) -> Iterator[R]:
    """Apply ``fn`` to every item, in order, over ``workers`` processes, showing items/s.

    Args:
        fn: A picklable top-level function.
        items: Work items.
        workers: Processes; 1 runs in this process (easier to debug and profile).
        desc: Progress bar label.
        unit: Progress bar unit.

    Yields:
        Results in the order of ``items``.
    """
    bar = tqdm(total=len(items), desc=desc, unit=unit, dynamic_ncols=True, mininterval=1.0)
    results: Iterable[R]
    with bar:
        if workers <= 1 or len(items) <= 1:
            results = map(fn, items)
            for result in results:
                bar.update()
                yield result
            return
        ctx = mp.get_context("forkserver")
        with ctx.Pool(min(workers, len(items))) as pool:
            for result in pool.imap(fn, items, chunksize=1):
                bar.update()
                yield result
