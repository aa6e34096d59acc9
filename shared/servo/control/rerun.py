"""rerun: start a new run from an earlier one — from its failures, or for a subset of assets."""

from __future__ import annotations

from servo.control.common import RUNS, TASKS
from servo.control.deploy import current_code_version, load_manifest
from servo.control.trigger import TriggerRequest, TriggerResult, trigger
from servo.core.errors import InvalidRequest, NotFound, SelectionError
from servo.core.planner import PartitionSelection
from servo.core.selection import parse_selection, resolve_selection
from servo.ports import Ports, Where

RERUNNABLE = ("FAILED", "SKIPPED", "CANCELLED")


def rerun(
    ports: Ports,
    parent_run_id: str,
    *,
    from_failure: bool = False,
    select: str | None = None,
    actor: str = "user:unknown",
    request_id: str | None = None,
    code_version: str | None = None,
) -> TriggerResult:
    """Re-execute part of ``parent_run_id`` with the current code.

    ``from_failure``: the tasks that did not succeed (failed, skipped, cancelled) — which are
    exactly the failed tasks and their downstream tasks. ``select``: the parent's tasks of the
    assets matched by the selection.
    """
    if from_failure == (select is not None):
        raise InvalidRequest("choose exactly one of --from-failure and --select SELECTION")
    parent = ports.state.get(RUNS, parent_run_id)
    if parent is None:
        raise NotFound(f"run {parent_run_id} does not exist; `servo status` lists recent runs")
    tasks = [
        d
        for _, d in ports.state.query(
            TASKS, [Where("run_id", "==", parent_run_id)], order_by="index"
        )
    ]
    if from_failure:
        if parent["state"] not in ("FAILED", "CANCELLED", "TIMED_OUT"):
            raise InvalidRequest(
                f"run {parent_run_id} is {parent['state']}; only a failed, cancelled or timed-out "
                "run can be re-executed from failure"
            )
        only = [t["task_id"] for t in tasks if t["state"] in RERUNNABLE]
        mode = "from_failure"
    else:
        assert select is not None
        cv = code_version or current_code_version(ports) or parent["code_version"]
        manifest = load_manifest(ports, cv)
        try:
            chosen = {str(k) for k in resolve_selection(parse_selection(select), manifest.graph)}
        except SelectionError as exc:
            raise InvalidRequest(str(exc)) from None
        only = [t["task_id"] for t in tasks if t["asset"] in chosen]
        if not only:
            raise InvalidRequest(
                f"selection {select!r} matches none of the assets of run {parent_run_id} "
                f"({', '.join(parent.get('assets') or [])})"
            )
        mode = "select"
    if not only:
        raise InvalidRequest(f"run {parent_run_id} has no tasks to re-execute")
    req = TriggerRequest(
        selection=parent["selection"],
        partitions=PartitionSelection.from_json(parent.get("partitions")),
        tags={**(parent.get("tags") or {}), "servo/parent_run_id": parent_run_id},
        code_version=code_version,
        trigger={"type": "rerun", "parent_run_id": parent_run_id, "mode": mode, "select": select},
        actor=actor,
        parent_run_id=parent_run_id,
        only_tasks=only,
        request_id=request_id,
        max_concurrency=parent.get("max_concurrency"),
    )
    return trigger(ports, req)
