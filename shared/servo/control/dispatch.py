"""dispatch: move READY tasks to DISPATCHED with a new attempt, within the limits, and send
one worker message per attempt.

Limits: a run's ``max_concurrency``; named pools (``@asset(pool="warehouse")`` with
``Definitions(pools={"warehouse": 2})``); and an optional global limit
(``max_concurrent_tasks``). Pools are sets of slot documents, one per unit of capacity, claimed
and released in the same transaction as the task's transition — so no single document is
written for every task of a large run, and ready tasks beyond a limit simply stay READY.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from servo.control.common import (
    ACTIVE_TASK_STATES,
    ASSET_PARTITIONS,
    GLOBAL_POOL,
    RUNS,
    SLOTS,
    TASKS,
    TOPIC_EXECUTE,
    Settings,
    apply_run,
    apply_task,
    asset_partition_id,
    attempt_token,
    task_doc_id,
)
from servo.control.deploy import load_manifest
from servo.control.uow import Cause, UnitOfWork, in_uow
from servo.core.keys import PartitionKey
from servo.core.mappings import (
    IdentityPartitionMapping,
    LastPartitionMapping,
    PartitionMapping,
    TimeWindowPartitionMapping,
    default_mapping,
    mapping_from_spec,
)
from servo.core.partitions import (
    PartitionContext,
    PartitionsDefinition,
    TimeWindowPartitionsDefinition,
    partitions_from_spec,
)
from servo.core.statemachine import RunEvent, RunState, TaskEvent, TaskSignal, TaskState
from servo.ports import Doc, Ports, Where
from servo.worker.envelope import CheckRef, InputRef, TaskEnvelope

LIVE_RUN_STATES = (RunState.QUEUED.value, RunState.STARTING.value, RunState.RUNNING.value)


def pool_limits(ports: Ports, run: Doc, settings: Settings) -> dict[str, int]:
    """The concurrency limits that apply to a run (or to a task: it carries the run's code
    version)."""
    manifest = load_manifest(ports, run["code_version"])
    limits = dict(manifest.pools)
    for k, v in ports.settings.get("pools", {}).items():
        limits[k] = int(v)
    if settings.max_concurrent_tasks:
        limits[GLOBAL_POOL] = settings.max_concurrent_tasks
    return limits


def _slot_ids(pool: str, limit: int) -> list[str]:
    return [f"{pool}:{i}" for i in range(limit)]


def needed_pools(task: Doc, limits: dict[str, int]) -> list[str]:
    """The limited pools a task takes a slot of while it runs."""
    needed = []
    if task.get("pool") in limits:
        needed.append(str(task["pool"]))
    if GLOBAL_POOL in limits:
        needed.append(GLOBAL_POOL)
    return needed


def free_slots(
    slots: dict[str, Doc], pools: Sequence[str], limits: dict[str, int]
) -> dict[str, list[str]]:
    return {
        p: [s for s in _slot_ids(p, limits[p]) if not (slots.get(s) or {}).get("holder")]
        for p in pools
    }


def claim_and_dispatch(
    uow: UnitOfWork,
    candidates: Sequence[tuple[str, Doc]],
    free: dict[str, list[str]],
    limits: dict[str, int],
    settings: Settings,
    budget: int,
    *,
    run_running: bool,
) -> list[Doc]:
    """Dispatch candidates (READY tasks, in order) while slots and ``budget`` last.

    ``run_running`` records on each task whether its run was RUNNING, so its ``started``
    report only reads the run document when the run may still need to become RUNNING.

    A candidate needing a pool with no free slot in ``free`` stays READY. Writes only: the
    caller has done every read (the slot documents behind ``free``)."""
    dispatched: list[Doc] = []
    for doc_id, task in candidates:
        if len(dispatched) >= budget:
            break
        if task["state"] != TaskState.READY.value:
            continue
        needed = needed_pools(task, limits)
        if any(not free.get(p) for p in needed):
            continue  # stays READY until a slot frees up
        claimed = [free[p].pop(0) for p in needed]
        attempt = int(task["attempt"]) + 1
        outcome = apply_task(
            uow,
            task,
            TaskSignal(TaskEvent.DISPATCH),
            extra={
                "slots": claimed,
                "dispatched_ms": uow.now_ms,
                "due_at": uow.now_ms + settings.dispatch_timeout_ms,
                "started_ms": None,
                "heartbeat_ms": None,
                "exec_deadline": None,
                "cancel_deadline": None,
                "run_running": run_running,
            },
        )
        if not outcome.accepted:
            for p, sid in zip(needed, claimed, strict=True):
                free[p].insert(0, sid)
            continue
        for sid in claimed:
            uow.set(
                SLOTS,
                sid,
                {
                    "pool": sid.rsplit(":", 1)[0],
                    "holder": doc_id,
                    "attempt": attempt,
                    "since_ms": uow.now_ms,
                },
            )
        dispatched.append(task)
    return dispatched


def _dispatch_in_run(
    ports: Ports, run_id: str, settings: Settings, *, task_ids: Sequence[str] | None = None
) -> list[Doc]:
    """One transaction: dispatch as many READY tasks of the run as the limits allow."""
    cause = Cause(actor="system", source="servo/dispatch", correlation_id=run_id)

    def body(uow: UnitOfWork) -> list[Doc]:
        run = uow.get(RUNS, run_id)
        if run is None or run["state"] not in LIVE_RUN_STATES or not run.get("tasks_written"):
            return []
        limits = pool_limits(ports, run, settings)
        capacity = settings.dispatch_batch
        global_slots: dict[str, Doc] = {}
        if GLOBAL_POOL in limits:
            # Read the global slots first: when none is free there is nothing to query.
            global_slots = uow.get_many(SLOTS, _slot_ids(GLOBAL_POOL, limits[GLOBAL_POOL]))
            capacity = min(
                capacity, len(free_slots(global_slots, [GLOBAL_POOL], limits)[GLOBAL_POOL])
            )
        if run.get("max_concurrency") and capacity > 0:
            active = uow.query(
                TASKS,
                [Where("run_id", "==", run_id), Where("state", "in", list(ACTIVE_TASK_STATES))],
            )
            capacity = min(capacity, int(run["max_concurrency"]) - len(active))
        if capacity <= 0:
            return []
        if task_ids is not None:
            docs = uow.get_many(TASKS, [task_doc_id(run_id, t) for t in task_ids])
            ready = sorted(
                ((k, d) for k, d in docs.items() if d["state"] == TaskState.READY.value),
                key=lambda kv: kv[1]["order"],
            )[:capacity]
        else:
            ready = uow.query(
                TASKS,
                [Where("run_id", "==", run_id), Where("state", "==", TaskState.READY.value)],
                order_by="order",
                limit=capacity,
            )
        if not ready:
            return []
        named = sorted(
            {str(d["pool"]) for _, d in ready if d.get("pool") in limits} - {GLOBAL_POOL}
        )
        slot_ids = [s for p in named for s in _slot_ids(p, limits[p])]
        slots = {**global_slots, **(uow.get_many(SLOTS, slot_ids) if slot_ids else {})}
        pools = named + ([GLOBAL_POOL] if GLOBAL_POOL in limits else [])
        # Writes start here.
        dispatched = claim_and_dispatch(
            uow,
            ready,
            free_slots(slots, pools, limits),
            limits,
            settings,
            capacity,
            run_running=run["state"] == RunState.RUNNING.value,
        )
        if dispatched and run["state"] == RunState.QUEUED.value:
            apply_run(uow, run, RunEvent.ADMIT, "first tasks dispatched")
        return dispatched

    dispatched, _ = in_uow(ports, cause, body)
    return dispatched


def dispatch_run(ports: Ports, run_id: str, *, task_ids: Sequence[str] | None = None) -> int:
    """Dispatch the run's READY tasks; returns how many attempts were sent to workers."""
    settings = Settings.of(ports)
    total = 0
    while True:
        dispatched = _dispatch_in_run(ports, run_id, settings, task_ids=task_ids)
        ports.crash("dispatch.after_commit")
        for task in dispatched:
            send_envelope(ports, task, settings)
        total += len(dispatched)
        if task_ids is not None or len(dispatched) < settings.dispatch_batch:
            return total


def dispatch_waiting(ports: Ports, pool: str | None = None, limit: int = 200) -> int:
    """Dispatch READY tasks of any run (after a pool slot was released)."""
    if pool == GLOBAL_POOL:
        settings = Settings.of(ports)
        size = settings.max_concurrent_tasks or 0
        ids = _slot_ids(GLOBAL_POOL, size)
        slots = ports.state.transact(lambda txn: txn.get_many(SLOTS, ids)) if ids else {}
        free = sum(1 for s in ids if not (slots.get(s) or {}).get("holder"))
        if size and free == 0:
            return 0
        # Only the runs of the first few waiting tasks can use the free slots.
        limit = min(limit, max(free, 1) * 4)
    where = [Where("state", "==", TaskState.READY.value)]
    if pool and pool != GLOBAL_POOL:
        where.append(Where("pool", "==", pool))
    rows = ports.state.query(TASKS, where, order_by="order", limit=limit)
    runs: list[str] = []
    for _, d in rows:
        if d["run_id"] not in runs:
            runs.append(d["run_id"])
    return sum(dispatch_run(ports, r) for r in runs)


def retry_due(ports: Ports, run_id: str, task_id: str, attempt: int) -> int:
    """A retry's delay has passed: RETRY_WAIT -> READY, then dispatch."""
    cause = Cause(actor="system", source="servo/dispatch", correlation_id=run_id)

    def body(uow: UnitOfWork) -> bool:
        task = uow.get(TASKS, task_doc_id(run_id, task_id))
        if (
            task is None
            or task["state"] != TaskState.RETRY_WAIT.value
            or int(task["attempt"]) != attempt
        ):
            return False
        outcome = apply_task(uow, task, TaskSignal(TaskEvent.RETRY_DUE), extra={"due_at": None})
        return outcome.accepted and not outcome.duplicate

    released, _ = in_uow(ports, cause, body)
    return dispatch_run(ports, run_id) if released else 0


def output_path(asset: str, partition: str | None, run_id: str, task_id: str, attempt: int) -> str:
    part = partition if partition is not None else "__all__"
    return f"outputs/{asset}/{part}/{run_id}.{task_id}.{attempt}.pkl"


def log_path(run_id: str, task_id: str, attempt: int) -> str:
    return f"logs/{run_id}/{task_id}/{attempt}.log"


def build_envelope(ports: Ports, task: Doc, settings: Settings | None = None) -> TaskEnvelope:
    """The worker message for the task's current attempt, with its inputs resolved to the
    committed outputs of the upstream partitions it reads."""
    settings = settings or Settings.of(ports)
    run = ports.state.get(RUNS, task["run_id"]) or {}
    manifest = load_manifest(ports, run["code_version"])
    spec = manifest.assets_by_key[task["asset"]]
    ctx = PartitionContext(now=ports.clock.now())
    parts = partitions_from_spec(spec.partitions) if spec.partitions else None
    pkey = PartitionKey.parse_canonical(task["partition"]) if task.get("partition") else None
    window: tuple[str, str] | None = None
    if isinstance(parts, TimeWindowPartitionsDefinition) and pkey is not None:
        w = parts.window(pkey)
        window = (w.start.isoformat(), w.end.isoformat())
    inputs: list[tuple[str | None, str, list[str | None], bool | None]] = []
    wanted: list[str] = []
    for dep in spec.deps:
        up = manifest.assets_by_key[dep.asset]
        up_parts = partitions_from_spec(up.partitions) if up.partitions else None
        as_mapping: bool | None = None
        if up_parts is None:
            keys: list[str | None] = [None]
        elif parts is None or pkey is None:
            keys = [k.canonical() for k in up_parts.keys(ctx)]
            as_mapping = True  # every partition of the upstream, by partition key
        else:
            mapping = (
                mapping_from_spec(dep.mapping) if dep.mapping else default_mapping(up_parts, parts)
            )
            assert mapping is not None
            keys = [
                k.canonical() if k is not None else None
                for k in mapping.upstream_keys(pkey, up_parts, parts, ctx)
            ]
            as_mapping = not _one_to_one(mapping, up_parts, parts)
        inputs.append((dep.input_name, dep.asset, keys, as_mapping))
        wanted.extend(asset_partition_id(dep.asset, k) for k in keys)
    pointers: dict[str, Doc] = {}
    if wanted:
        pointers = ports.state.transact(lambda txn: txn.get_many(ASSET_PARTITIONS, wanted))
    refs = [
        InputRef(
            input_name=name,
            asset=asset,
            as_mapping=as_mapping,
            partitions=keys,
            paths=[
                (pointers.get(asset_partition_id(asset, k)) or {}).get("output_path") for k in keys
            ],
        )
        for name, asset, keys, as_mapping in inputs
    ]
    attempt = int(task["attempt"])
    return TaskEnvelope(
        tenant=ports.tenant,
        workspace=ports.workspace,
        run_id=task["run_id"],
        task_id=task["task_id"],
        attempt=attempt,
        asset=task["asset"],
        partition=task.get("partition"),
        partition_window=window,
        code_version=run["code_version"],
        inputs=refs,
        checks=[
            CheckRef(name=c.name, blocking=c.blocking)
            for c in manifest.checks_by_asset.get(task["asset"], ())
        ],
        output_path=output_path(
            task["asset"], task.get("partition"), task["run_id"], task["task_id"], attempt
        ),
        log_path=log_path(task["run_id"], task["task_id"], attempt),
        timeout_ms=task.get("timeout_ms"),
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        token=attempt_token(
            settings.callback_secret,
            ports.tenant,
            ports.workspace,
            task["run_id"],
            task["task_id"],
            attempt,
        ),
        run_tags=dict(run.get("tags") or {}),
    )


def _one_to_one(
    mapping: PartitionMapping, upstream: PartitionsDefinition, downstream: PartitionsDefinition
) -> bool:
    """Whether ``mapping`` always reads exactly one upstream partition, so the asset function
    gets the value itself rather than a {partition: value} mapping (whatever the count today)."""
    if isinstance(mapping, (IdentityPartitionMapping, LastPartitionMapping)):
        return True
    if isinstance(mapping, TimeWindowPartitionMapping):
        return (
            mapping.start_offset == 0
            and mapping.end_offset == 0
            and isinstance(upstream, TimeWindowPartitionsDefinition)
            and isinstance(downstream, TimeWindowPartitionsDefinition)
            and upstream.unit == downstream.unit
        )
    return False


def send_envelope(ports: Ports, task: Doc, settings: Settings) -> None:
    envelope = build_envelope(ports, task, settings)
    payload: dict[str, Any] = envelope.model_dump(mode="json")
    ports.queue.enqueue(
        TOPIC_EXECUTE,
        payload,
        name=f"exec-{envelope.run_id}-{envelope.task_id}-{envelope.attempt}",
    )
