"""Running a command in a fresh process and measuring it: wall time, and the peak memory of
the whole process tree it starts (sampled from /proc, so no extra dependency is needed)."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Each sample reads /proc (about 2 ms of CPU for a small tree), so sample sparingly to keep the
# sampler from slowing down what it measures on a small machine.
SAMPLE_INTERVAL_S = 0.05


@dataclass(frozen=True)
class Measured:
    """One finished command: how long it took, what it printed, and its tree's peak memory."""

    wall_s: float
    cpu_s: float  # user + system time of the process and every descendant it waited for
    returncode: int
    stdout: str
    stderr: str
    peak_tree_rss_mb: float
    peak_tree_pss_mb: float

    def check(self) -> None:
        """Raise if the command failed."""
        if self.returncode != 0:
            raise RuntimeError(
                f"benchmark command failed with exit code {self.returncode}:\n{self.stderr[-4000:]}"
            )

    def json_out(self) -> Any:
        """The command's standard output parsed as JSON (it must have succeeded)."""
        self.check()
        return json.loads(self.stdout)


def _children_of() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses; fields after the last ')' are fixed.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def _memory_kb(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def tree_memory_kb(root: int) -> tuple[int, int]:
    """Summed RSS and PSS (KiB) of ``root`` and all its descendants.

    RSS counts pages shared between the processes once per process; PSS splits them, so the
    PSS sum is what the tree really occupies.
    """
    children = _children_of()
    rss = pss = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        r, p = _memory_kb(pid)
        rss, pss = rss + r, pss + p
        stack.extend(children.get(pid, ()))
    return rss, pss


def run_measured(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 1800,
    sample_memory: bool = False,
) -> Measured:
    """Run ``argv`` to completion, timing it from spawn to exit."""
    peak = [0, 0]
    done = threading.Event()
    # Commands run one at a time, so the growth of this process's children's rusage is the
    # command's own CPU time: a figure that stays honest when the machine is busy.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def sample() -> None:
        while not done.is_set():
            rss, pss = tree_memory_kb(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            done.wait(SAMPLE_INTERVAL_S)

    sampler = threading.Thread(target=sample, daemon=True)
    if sample_memory:
        sampler.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    finally:
        wall = time.perf_counter() - start
        done.set()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if sample_memory:
        sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measured(
        wall_s=wall,
        cpu_s=cpu,
        returncode=proc.returncode,
        stdout=stdout,
        stderr=stderr,
        peak_tree_rss_mb=peak[0] / 1024,
        peak_tree_pss_mb=peak[1] / 1024,
    )


def median(values: Sequence[float]) -> float:
    """The median (of one value: that value)."""
    return statistics.median(values)


def repeat(
    argv: Sequence[str], times: int, *, json_output: bool = True, **kwargs: Any
) -> tuple[Measured, list[Measured]]:
    """Run ``argv`` ``times`` + 1 times and return the first run (cold: the generated code's
    bytecode is compiled then) and the ``times`` warm runs. Every run must succeed (and print
    JSON when ``json_output``)."""
    runs = [run_measured(argv, **kwargs) for _ in range(times + 1)]
    for m in runs:
        if json_output:
            m.json_out()
        else:
            m.check()
    return runs[0], runs[1:]
