"""Wall time, CPU time and peak memory of one command, run in its own process tree.

Peak memory is taken two ways and both are kept: the kernel's high-water mark of the largest single
process (``ru_maxrss`` from ``wait4`` in a small launcher process, launch.py, exact but blind to how many
workers ran at once) and the largest sum of the resident sizes of every process of the tree (sampled
every 0.1 s with psutil: it sees a pool of workers together and can miss a spike shorter than a sample).
CPU seconds (user + system) are what CPU-hours in docs/scale.md are made of: ``wait4``'s count for the
command and the children it waited for or, when higher, the sum of the last sampled CPU times of every
process of the tree (a multiprocessing forkserver's workers are not the command's children: only the
samples see them). On a shared machine CPU seconds move far less than wall seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

SAMPLE_S = 0.1
LAUNCHER = Path(__file__).with_name("launch.py")


class CommandFailed(RuntimeError):
    """A measured command exited non-zero; the message names it and ends with its log's tail."""


class _Tree:
    """Samples of a process tree: the largest summed RSS seen and each process's latest CPU seconds."""

    def __init__(self, launcher: psutil.Process) -> None:
        self.launcher = launcher
        self.peak_rss = 0
        self.process_rss = 0
        self.cpu: dict[tuple[int, float], float] = {}

    def sample(self) -> None:
        """Add one sample of every process below the launcher."""
        total = 0
        try:
            processes = self.launcher.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for proc in processes:
            try:
                with proc.oneshot():
                    rss = proc.memory_info().rss
                    times = proc.cpu_times()
                    self.cpu[(proc.pid, proc.create_time())] = times.user + times.system
            except psutil.NoSuchProcess:
                continue
            total += rss
            self.process_rss = max(self.process_rss, rss)
        self.peak_rss = max(self.peak_rss, total)


def load() -> dict[str, Any]:
    """The machine's load right now: 1-minute load average and CPU count (noise on a shared machine)."""
    return {"loadavg_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}


def run_measured(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run ``command`` and measure it.

    Args:
        command: Program and arguments.
        cwd: Working folder.
        env: The whole environment of the command.
        log: File that receives its stdout and stderr (appended).

    Returns:
        ``seconds``, ``cpu_seconds``, ``peak_rss_mb`` (largest sampled sum over the tree, or the largest
        single process if that is higher), ``max_process_rss_mb`` and the load before and after.

    Raises:
        CommandFailed: If the command exits non-zero.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    before = load()
    fd, usage_file = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        with log.open("a", encoding="utf-8") as out:
            out.write(f"\n$ {' '.join(command)}\n")
            out.flush()
            start = time.perf_counter()
            launcher = [sys.executable, "-S", "-I", str(LAUNCHER), usage_file, *command]
            proc = subprocess.Popen(launcher, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
            tree = _Tree(psutil.Process(proc.pid))
            while proc.poll() is None:
                tree.sample()
                time.sleep(SAMPLE_S)
            seconds = time.perf_counter() - start
        if proc.returncode != 0:
            tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise CommandFailed(f"{' '.join(command)} exited {proc.returncode} (log {log}):\n{tail}")
        usage = json.loads(Path(usage_file).read_text())
    finally:
        os.unlink(usage_file)
    max_process = max(usage["maxrss_kb"] * 1024, tree.process_rss)
    return {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(max(usage["utime"] + usage["stime"], sum(tree.cpu.values())), 2),
        "peak_rss_mb": round(max(tree.peak_rss, max_process) / 2**20, 1),
        "max_process_rss_mb": round(max_process / 2**20, 1),
        "load_before": before,
        "load_after": load(),
    }
