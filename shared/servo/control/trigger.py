"""trigger: validate a run request, plan it, reserve its run_key, write the run and its tasks.

Idempotent: every request carries an idempotency key (its ``run_key``, or a client-generated
``request_id``). The same key with the same request returns the existing run — and finishes
writing it if an earlier delivery crashed half-way; the same key with a different request is a
conflict. Large runs are written in batches (a Firestore transaction holds at most 500 writes),
and the run becomes dispatchable only once every task is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from servo.control.common import (
    RUN_KEYS,
    RUNS,
    TASKS,
    TOPIC_DISPATCH,
    task_doc_id,
)
from servo.control.deploy import current_code_version, load_manifest
from servo.control.uow import Cause, UnitOfWork, in_uow
from servo.core import events as ev
from servo.core.canonical import content_hash, sha256_hex
from servo.core.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PartitionError,
    SelectionError,
)
from servo.core.partitions import PartitionContext
from servo.core.planner import PartitionSelection, Plan, PlannedTask, plan_run, plan_spec
from servo.core.selection import parse_selection, resolve_selection
from servo.core.statemachine import RunState, TaskState
from servo.ports import Doc, Ports
from servo.telemetry.tracing import traced

TASK_BATCH = 200
TRIGGER_TYPES = ("manual", "schedule", "sensor", "backfill", "rerun", "automation", "api")


@dataclass
class TriggerRequest:
    """A request for a run. ``selection`` uses the asset selection syntax."""

    selection: str
    partitions: PartitionSelection = field(default_factory=PartitionSelection)
    run_key: str | None = None
    request_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    code_version: str | None = None
    trigger: dict[str, Any] = field(default_factory=lambda: {"type": "manual"})
    actor: str = "user:unknown"
    parent_run_id: str | None = None
    only_tasks: list[str] | None = None  # restrict the plan to these task ids (reruns)
    max_concurrency: int | None = None
    priority: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "selection": self.selection,
            "partitions": self.partitions.to_json(),
            "run_key": self.run_key,
            "request_id": self.request_id,
            "tags": dict(self.tags),
            "code_version": self.code_version,
            "trigger": dict(self.trigger),
            "actor": self.actor,
            "parent_run_id": self.parent_run_id,
            "only_tasks": list(self.only_tasks) if self.only_tasks is not None else None,
            "max_concurrency": self.max_concurrency,
            "priority": self.priority,
        }

    @classmethod
    def from_json(cls, data: Any) -> TriggerRequest:
        """Decode and validate a request; raises InvalidRequest naming the bad field."""
        if not isinstance(data, dict):
            raise InvalidRequest("a run request must be a JSON object")
        sel = data.get("selection")
        if not isinstance(sel, str) or not sel.strip():
            raise InvalidRequest(
                "field `selection` is required: an asset selection such as 'orders+'"
            )
        tags = data.get("tags") or {}
        if not isinstance(tags, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
        ):
            raise InvalidRequest("field `tags` must map strings to strings")
        for name in ("run_key", "request_id", "code_version", "parent_run_id", "actor"):
            v = data.get(name)
            if v is not None and (not isinstance(v, str) or not v or len(v) > 512):
                raise InvalidRequest(
                    f"field `{name}` must be a non-empty string of at most 512 characters"
                )
        trigger = data.get("trigger") or {"type": "manual"}
        if not isinstance(trigger, dict) or trigger.get("type") not in TRIGGER_TYPES:
            raise InvalidRequest(f"field `trigger.type` must be one of {', '.join(TRIGGER_TYPES)}")
        only = data.get("only_tasks")
        if only is not None and (
            not isinstance(only, list) or not all(isinstance(t, str) for t in only)
        ):
            raise InvalidRequest("field `only_tasks` must be a list of task ids")
        mc = data.get("max_concurrency")
        if mc is not None and (not isinstance(mc, int) or isinstance(mc, bool) or mc < 1):
            raise InvalidRequest("field `max_concurrency` must be a positive integer")
        prio = data.get("priority", 0)
        if not isinstance(prio, int) or isinstance(prio, bool) or not -1000 <= prio <= 1000:
            raise InvalidRequest("field `priority` must be an integer between -1000 and 1000")
        parts = data.get("partitions") or {}
        try:
            selection = PartitionSelection.from_json(parts)
        except (TypeError, ValueError, AttributeError):
            raise InvalidRequest(
                'field `partitions` must look like {"keys": [...], "ranges": [[start, end]], "all": false}'
            ) from None
        return cls(
            selection=sel,
            partitions=selection,
            run_key=data.get("run_key"),
            request_id=data.get("request_id"),
            tags=dict(tags),
            code_version=data.get("code_version"),
            trigger=dict(trigger),
            actor=data.get("actor") or "user:unknown",
            parent_run_id=data.get("parent_run_id"),
            only_tasks=list(only) if only is not None else None,
            max_concurrency=mc,
            priority=prio,
        )


@dataclass(frozen=True)
class TriggerResult:
    run_id: str
    created: bool  # False when an existing run was returned for the same key
    state: str
    task_count: int
    fingerprint: str


def _plan(ports: Ports, req: TriggerRequest, code_version: str) -> Plan:
    manifest = load_manifest(ports, code_version)
    try:
        selected = resolve_selection(parse_selection(req.selection), manifest.graph)
    except SelectionError as exc:
        raise InvalidRequest(str(exc)) from None
    if not selected:
        raise InvalidRequest(f"selection {req.selection!r} selects no assets")
    ctx = PartitionContext(now=ports.clock.now())
    try:
        plan = plan_run(manifest, selected, req.partitions, ctx)
    except PartitionError as exc:
        raise InvalidRequest(str(exc)) from None
    if req.only_tasks is not None:
        keep = set(req.only_tasks)
        unknown = sorted(keep - set(plan.by_id))
        if unknown:
            raise InvalidRequest(f"tasks {', '.join(unknown)} are not part of this plan")
        tasks = [t for t in plan.tasks if t.id in keep]
        trimmed = [
            PlannedTask(
                key=t.key,
                id=t.id,
                index=i,
                upstream=tuple(u for u in t.upstream if u in keep),
                max_retries=t.max_retries,
                timeout_ms=t.timeout_ms,
                pool=t.pool,
            )
            for i, t in enumerate(tasks)
        ]
        fp = content_hash(
            plan_spec(plan.code_version, plan.manifest_id, plan.assets, plan.partitions, trimmed)
        )
        plan = Plan(
            code_version=plan.code_version,
            manifest_id=plan.manifest_id,
            assets=plan.assets,
            partitions=plan.partitions,
            tasks=tuple(trimmed),
            fingerprint=fp,
            by_id={t.id: t for t in trimmed},
        )
    if not plan.tasks:
        raise InvalidRequest("the request plans no tasks")
    return plan


def request_hash(req: TriggerRequest, plan: Plan) -> str:
    return content_hash(
        {
            "fingerprint": plan.fingerprint,
            "tags": dict(sorted(req.tags.items())),
            "max_concurrency": req.max_concurrency,
            "priority": req.priority,
            "parent": req.parent_run_id,
        }
    )[:32]


@traced("servo.trigger")
def trigger(ports: Ports, req: TriggerRequest) -> TriggerResult:
    """Create (or find) the run for ``req`` and make its first tasks dispatchable."""
    code_version = req.code_version or current_code_version(ports)
    if code_version is None:
        raise InvalidRequest("nothing is deployed in this workspace; run `servo deploy` first")
    plan = _plan(ports, req, code_version)
    rhash = request_hash(req, plan)
    idem = req.run_key or req.request_id or ports.ids.new_id("q")
    key_id = "k" + sha256_hex(idem)[:40]
    cause = Cause(actor=req.actor, source="servo/trigger", causation_id=req.request_id)

    def reserve(uow: UnitOfWork) -> tuple[Doc, bool]:
        existing = uow.get(RUN_KEYS, key_id)
        if existing is not None:
            run = uow.get(RUNS, existing["run_id"])
            if run is None:  # pragma: no cover - the key and run are written together
                raise NotFound(f"run {existing['run_id']} of run_key {idem!r} is missing")
            if existing["request_hash"] != rhash:
                what = f"run_key {req.run_key!r}" if req.run_key else f"request {idem!r}"
                raise Conflict(
                    f"{what} was already used for run {run['run_id']} with a different request "
                    f"(selection {run['selection']!r}, partitions {run['partitions']}); use another run_key"
                )
            if req.run_key:
                uow.emit(ev.RUN_KEY_HIT, run_id=run["run_id"], data={"run_key": req.run_key})
            return run, False
        run_id = ports.ids.new_id("r")
        order_prefix = f"{1000 - req.priority:04d}.{run_id}"
        run = {
            "run_id": run_id,
            "state": RunState.QUEUED.value,
            "run_key": req.run_key,
            "idem_key": idem,
            "request": req.to_json(),
            "request_hash": rhash,
            "fingerprint": plan.fingerprint,
            "code_version": code_version,
            "manifest_id": plan.manifest_id,
            "selection": req.selection,
            "assets": list(plan.assets),
            "partitions": plan.partitions.to_json(),
            "tags": dict(req.tags),
            "trigger": dict(req.trigger),
            "actor": req.actor,
            "parent_run_id": req.parent_run_id,
            "task_count": len(plan.tasks),
            "tasks_written": False,
            "max_concurrency": req.max_concurrency,
            "priority": req.priority,
            "order_prefix": order_prefix,
            "created_ms": uow.now_ms,
            "updated_ms": uow.now_ms,
            "started_ms": None,
            "ended_ms": None,
            "last_event": None,
            "reason": None,
        }
        uow.create(RUN_KEYS, key_id, {"run_id": run_id, "request_hash": rhash, "key": idem})
        uow.create(RUNS, run_id, dict(run))
        uow.emit(
            ev.RUN_CREATED,
            run_id=run_id,
            data={
                "selection": req.selection,
                "partitions": plan.partitions.to_json(),
                "fingerprint": plan.fingerprint,
                "code_version": code_version,
                "task_count": len(plan.tasks),
                "run_key": req.run_key,
                "trigger": dict(req.trigger),
                "tags": dict(req.tags),
                "parent_run_id": req.parent_run_id,
            },
        )
        return run, True

    (run, created), _ = in_uow(ports, cause, reserve)
    ports.crash("trigger.after_reserve")
    if not run.get("tasks_written"):
        write_tasks(ports, run, plan, cause)
        run["tasks_written"] = True
    return TriggerResult(
        run_id=run["run_id"],
        created=created,
        state=run["state"],
        task_count=int(run["task_count"]),
        fingerprint=run["fingerprint"],
    )


def task_document(
    run: Doc, t: PlannedTask, downstream: Sequence[str], single: Sequence[str], policy: Any
) -> Doc:
    state = TaskState.BLOCKED if t.upstream else TaskState.READY
    return {
        "run_id": run["run_id"],
        "task_id": t.id,
        "key": t.key.to_json(),
        "display": t.key.display(),
        "asset": str(t.key.asset),
        "partition": t.key.partition.canonical() if t.key.partition is not None else None,
        "partition_user": t.key.partition.user_string() if t.key.partition is not None else None,
        "index": t.index,
        "order": f"{run['order_prefix']}.{t.index:08d}",
        "state": state.value,
        "attempt": 0,
        "retries_used": 0,
        "max_retries": t.max_retries,
        "retry_policy": policy,
        # Copied from the run so that a task's reports never need to read the run document.
        "code_version": run["code_version"],
        "max_concurrency": run.get("max_concurrency"),
        "timeout_ms": t.timeout_ms,
        "pool": t.pool,
        "upstream": list(t.upstream),
        "downstream": list(downstream),
        "release_with": list(single),
        "succeeded": False,
        "cancel_requested": False,
        "due_at": None,
        "last_event": "BLOCK" if state is TaskState.BLOCKED else "RELEASE",
        "reason": "waiting for upstream tasks" if t.upstream else "no upstream tasks",
        "created_ms": run["created_ms"],
        "updated_ms": run["created_ms"],
        "error": None,
        "slot": None,
    }


def write_tasks(ports: Ports, run: Doc, plan: Plan, cause: Cause) -> None:
    """Write the run's tasks in batches (idempotent), then mark the run written and dispatch."""
    manifest = load_manifest(ports, run["code_version"])
    downstream = plan.downstream()
    single: dict[str, list[str]] = {t.id: [] for t in plan.tasks}
    for t in plan.tasks:
        if len(t.upstream) == 1:
            single[t.upstream[0]].append(t.id)
    run_id = run["run_id"]
    tasks = list(plan.tasks)
    for start in range(0, len(tasks), TASK_BATCH):
        batch = tasks[start : start + TASK_BATCH]

        def body(uow: UnitOfWork, batch: list[PlannedTask] = batch) -> None:
            ids = [task_doc_id(run_id, t.id) for t in batch]
            existing = uow.get_many(TASKS, ids)
            created = []
            for t, doc_id in zip(batch, ids, strict=True):
                if doc_id in existing:
                    continue
                spec = manifest.assets_by_key[str(t.key.asset)]
                policy = spec.retry_policy.model_dump() if spec.retry_policy else None
                doc = task_document(run, t, downstream[t.id], single[t.id], policy)
                uow.create(TASKS, doc_id, doc)
                created.append({"task_id": t.id, "key": t.key.display(), "state": doc["state"]})
            if created:
                uow.emit(ev.TASKS_CREATED, run_id=run_id, data={"tasks": created})

        in_uow(ports, cause, body)
        ports.crash("trigger.after_task_batch")

    def finish(uow: UnitOfWork) -> None:
        doc = uow.get(RUNS, run_id)
        if doc is not None and not doc.get("tasks_written"):
            uow.update(RUNS, run_id, {"tasks_written": True, "updated_ms": uow.now_ms})

    in_uow(ports, cause, finish)
    ports.crash("trigger.after_tasks_written")
    ports.queue.enqueue(TOPIC_DISPATCH, {"run_id": run_id}, name=f"dispatch-{run_id}-initial")


def resume_unwritten_run(ports: Ports, run: Doc) -> None:
    """Finish writing a run whose trigger crashed after reserving it (called by the sweep)."""
    req = TriggerRequest.from_json(run["request"])
    plan = _plan(ports, req, run["code_version"])
    write_tasks(ports, run, plan, Cause(actor="system", source="servo/sweep"))
