"""Synthetic event histories shaped like the control plane's, for tests and benchmarks.

Each run records what the services record for it: ``run.created``, ``tasks.created``, the run's
state changes and, per task, dispatch -> running -> succeeded (or a failure, a retry and a
second attempt), a materialization reading the previous asset's partition, and a check.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from servo.core import events as ev
from servo.core.events import ms_to_iso

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


class _Clock:
    def __init__(self, start_ms: int) -> None:
        self.ms = start_ms
        self.n = 0

    def event(
        self,
        type_: str,
        lc: int,
        data: dict[str, Any],
        *,
        run_id: str | None = None,
        task_id: str | None = None,
        attempt: int | None = None,
        source: str = "servo/callback",
        actor: str = "system",
        step_ms: int = 3,
    ) -> dict[str, Any]:
        self.ms += step_ms
        self.n += 1
        return {
            "id": f"e{self.n:012d}",
            "type": type_,
            "specversion": 1,
            "source": source,
            "time": ms_to_iso(self.ms),
            "time_ms": self.ms,
            "tenant": "default",
            "workspace": "default",
            "run_id": run_id,
            "task_id": task_id,
            "attempt": attempt,
            "correlation_id": run_id,
            "causation_id": None,
            "actor": actor,
            "lc": lc,
            "seq": 0,
            "data": data,
        }


def synthetic_runs(
    runs: int,
    tasks_per_run: int,
    *,
    seed: int = 0,
    assets: int = 4,
    failure_rate: float = 0.05,
    start_ms: int = START_MS,
) -> Iterator[dict[str, Any]]:
    """Events of ``runs`` runs of ``tasks_per_run`` tasks each, in recording order.

    Tasks cycle through ``assets`` assets (``a0`` … ``a{assets-1}``), each daily-partitioned;
    task ``i`` materializes asset ``a{i % assets}`` for day ``i // assets`` and reads the
    same day of the previous asset.
    """
    rng = random.Random(seed)
    clock = _Clock(start_ms)
    for r in range(runs):
        run_id = f"r{r:08d}"
        lc = 1
        tasks = [f"t{r:08d}x{i:05d}" for i in range(tasks_per_run)]
        keys = [
            (
                f"a{i % assets}",
                f"2024-{1 + (i // assets) // 28 % 12:02d}-{1 + (i // assets) % 28:02d}",
            )
            for i in range(tasks_per_run)
        ]
        yield clock.event(
            ev.RUN_CREATED,
            lc,
            {
                "selection": "*",
                "partitions": {"keys": [], "ranges": [], "all": True},
                "fingerprint": f"f{r:063d}",
                "code_version": "cv1",
                "task_count": tasks_per_run,
                "run_key": None,
                "trigger": {"type": "schedule" if r % 3 == 0 else "manual"},
                "tags": {"team": f"t{r % 5}"},
                "parent_run_id": None,
            },
            run_id=run_id,
            source="servo/trigger",
            actor="user:bench",
        )
        for start in range(0, tasks_per_run, 200):
            yield clock.event(
                ev.TASKS_CREATED,
                lc,
                {
                    "tasks": [
                        {"task_id": t, "key": f"{a}:{p}", "state": "READY"}
                        for t, (a, p) in zip(
                            tasks[start : start + 200], keys[start : start + 200], strict=True
                        )
                    ]
                },
                run_id=run_id,
                source="servo/trigger",
            )
        lc += 1
        yield clock.event(
            ev.RUN_STATE,
            lc,
            {"from": "QUEUED", "to": "STARTING", "event": "ADMIT", "reason": "admitted"},
            run_id=run_id,
            source="servo/dispatch",
        )
        previous_path: dict[tuple[str, str], str] = {}
        failed_any = False
        for i, (t, (asset, part)) in enumerate(zip(tasks, keys, strict=True)):
            attempts = 2 if rng.random() < failure_rate else 1
            tl = lc
            for attempt in range(1, attempts + 1):
                common = {"asset": asset, "partition": part}
                tl += 1
                yield clock.event(
                    ev.TASK_STATE,
                    tl,
                    {
                        **common,
                        "from": "READY",
                        "to": "DISPATCHED",
                        "event": "DISPATCH",
                        "reason": f"dispatched attempt {attempt}",
                    },
                    run_id=run_id,
                    task_id=t,
                    attempt=attempt,
                    source="servo/dispatch",
                )
                tl += 1
                yield clock.event(
                    ev.TASK_STATE,
                    tl,
                    {
                        **common,
                        "from": "DISPATCHED",
                        "to": "RUNNING",
                        "event": "START",
                        "reason": f"attempt {attempt} started",
                    },
                    run_id=run_id,
                    task_id=t,
                    attempt=attempt,
                )
                tl += 1
                if attempt < attempts:
                    yield clock.event(
                        ev.TASK_STATE,
                        tl,
                        {
                            **common,
                            "from": "RUNNING",
                            "to": "RETRY_WAIT",
                            "event": "FAIL",
                            "reason": "ValueError: flaky source",
                        },
                        run_id=run_id,
                        task_id=t,
                        attempt=attempt,
                    )
                    tl += 1
                    yield clock.event(
                        ev.TASK_STATE,
                        tl,
                        {
                            **common,
                            "from": "RETRY_WAIT",
                            "to": "READY",
                            "event": "RETRY_DUE",
                            "reason": "retry due",
                        },
                        run_id=run_id,
                        task_id=t,
                        attempt=attempt,
                        source="servo/dispatch",
                    )
                    continue
                final_fail = rng.random() < failure_rate / 5
                if final_fail:
                    failed_any = True
                    yield clock.event(
                        ev.TASK_STATE,
                        tl,
                        {
                            **common,
                            "from": "RUNNING",
                            "to": "FAILED",
                            "event": "FAIL",
                            "reason": "ValueError: bad data",
                        },
                        run_id=run_id,
                        task_id=t,
                        attempt=attempt,
                    )
                    continue
                yield clock.event(
                    ev.TASK_STATE,
                    tl,
                    {
                        **common,
                        "from": "RUNNING",
                        "to": "SUCCEEDED",
                        "event": "SUCCEED",
                        "reason": f"attempt {attempt} succeeded",
                    },
                    run_id=run_id,
                    task_id=t,
                    attempt=attempt,
                )
                path = f"outputs/{asset}/{part}/{run_id}.{t}.{attempt}.pkl"
                up_asset = f"a{(i % assets) - 1}" if i % assets else None
                inputs = []
                if up_asset is not None and (up_asset, part) in previous_path:
                    inputs.append(
                        {
                            "asset": up_asset,
                            "partition": part,
                            "output_path": previous_path[(up_asset, part)],
                        }
                    )
                previous_path[(asset, part)] = path
                yield clock.event(
                    ev.MATERIALIZATION,
                    tl,
                    {
                        **common,
                        "output_path": path,
                        "size": 100 + i % 50,
                        "metadata": {"format": "pickle"},
                        "code_version": "cv1",
                        "inputs": inputs,
                    },
                    run_id=run_id,
                    task_id=t,
                    attempt=attempt,
                )
                if i % assets == assets - 1:
                    yield clock.event(
                        ev.CHECK_EVALUATED,
                        tl,
                        {
                            **common,
                            "name": "not_empty",
                            "passed": rng.random() > 0.02,
                            "severity": "ERROR",
                            "blocking": False,
                            "description": None,
                            "metadata": {},
                        },
                        run_id=run_id,
                        task_id=t,
                        attempt=attempt,
                    )
            lc = max(lc, tl)
        lc += 1
        yield clock.event(
            ev.RUN_STATE,
            lc,
            {
                "from": "STARTING",
                "to": "RUNNING",
                "event": "TASK_STARTED",
                "reason": "first task started",
            },
            run_id=run_id,
        )
        lc += 1
        to = "FAILED" if failed_any else "SUCCEEDED"
        yield clock.event(
            ev.RUN_STATE,
            lc,
            {
                "from": "RUNNING",
                "to": to,
                "event": "FAIL" if failed_any else "SUCCEED",
                "reason": "a task failed" if failed_any else "every task succeeded",
            },
            run_id=run_id,
        )
