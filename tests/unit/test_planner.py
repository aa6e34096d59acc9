"""The planner: one task per asset partition, edges through mappings, deterministic bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from servo.core.canonical import canonical_json
from servo.core.errors import PartitionError
from servo.core.keys import AssetKey
from servo.core.manifest import AssetSpec, CodeRef, DepSpec, Manifest
from servo.core.partitions import (
    DailyPartitionsDefinition,
    HourlyPartitionsDefinition,
    MonthlyPartitionsDefinition,
    PartitionContext,
    StaticPartitionsDefinition,
)
from servo.core.planner import PartitionSelection, Plan, plan_run, plan_spec

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
NOW = PartitionContext(now=datetime(2024, 6, 1, tzinfo=UTC))


def spec(key: str, deps: tuple[str, ...] = (), partitions: Any = None, **kw: Any) -> AssetSpec:
    return AssetSpec(
        key=key,
        deps=tuple(DepSpec(asset=d, input_name=d.rsplit("/", 1)[-1]) for d in deps),
        partitions=partitions.to_spec() if partitions is not None else None,
        code=CodeRef(module="proj.defs", name=key.replace("/", "_"), file="proj/defs.py", line=1),
        **kw,
    )


def manifest(*assets: AssetSpec) -> Manifest:
    return Manifest(
        project="t", code_version="cv1", assets=tuple(sorted(assets, key=lambda a: a.key))
    )


def keys(*names: str) -> list[AssetKey]:
    return [AssetKey.parse(n) for n in names]


def test_chain_plans_in_dependency_order() -> None:
    m = manifest(spec("a"), spec("b", ("a",)), spec("c", ("b",)))
    plan = plan_run(m, keys("a", "b", "c"))
    assert [t.key.display() for t in plan.tasks] == ["a", "b", "c"]
    ids = {t.key.display(): t.id for t in plan.tasks}
    assert plan.by_id[ids["c"]].upstream == (ids["b"],)
    assert plan.by_id[ids["a"]].upstream == ()


def test_one_task_per_partition_c1_c6() -> None:
    daily = DailyPartitionsDefinition(start_date="2024-01-01")
    m = manifest(spec("events", partitions=daily))
    plan = plan_run(
        m, keys("events"), PartitionSelection(ranges=(("2024-01-01", "2024-01-31"),)), NOW
    )
    assert len(plan.tasks) == 31
    assert plan.tasks[0].key.partition is not None
    assert [t.key.partition.user_string() for t in plan.tasks if t.key.partition][:2] == [
        "2024-01-01",
        "2024-01-02",
    ]


def test_daily_upstream_monthly_downstream_c4() -> None:
    daily = DailyPartitionsDefinition(start_date="2024-01-01")
    monthly = MonthlyPartitionsDefinition(start_date="2024-01-01")
    m = manifest(
        spec("daily_sales", partitions=daily), spec("monthly_sales", ("daily_sales",), monthly)
    )
    plan = plan_run(
        m,
        keys("daily_sales", "monthly_sales"),
        PartitionSelection(ranges=(("2024-01-01", "2024-01-31"),)),
        NOW,
    )
    monthly_tasks = [t for t in plan.tasks if str(t.key.asset) == "monthly_sales"]
    assert [t.key.display() for t in monthly_tasks] == ["monthly_sales:2024-01-01"]
    daily_ids = {t.id for t in plan.tasks if str(t.key.asset) == "daily_sales"}
    assert len(daily_ids) == 31
    assert set(monthly_tasks[0].upstream) == daily_ids


def test_partial_month_still_plans_the_month() -> None:
    daily = DailyPartitionsDefinition(start_date="2024-01-01")
    monthly = MonthlyPartitionsDefinition(start_date="2024-01-01")
    m = manifest(spec("d", partitions=daily), spec("m", ("d",), monthly))
    plan = plan_run(m, keys("d", "m"), PartitionSelection(keys=("2024-01-30", "2024-02-02")), NOW)
    assert [t.key.display() for t in plan.tasks if str(t.key.asset) == "m"] == [
        "m:2024-01-01",
        "m:2024-02-01",
    ]


def test_hourly_to_daily_rollup() -> None:
    hourly = HourlyPartitionsDefinition(start_date="2024-01-01-00:00")
    daily = DailyPartitionsDefinition(start_date="2024-01-01")
    m = manifest(spec("h", partitions=hourly), spec("d", ("h",), daily))
    plan = plan_run(
        m,
        keys("h", "d"),
        PartitionSelection(ranges=(("2024-01-01-00:00", "2024-01-01-23:00"),)),
        NOW,
    )
    (day,) = [t for t in plan.tasks if str(t.key.asset) == "d"]
    assert len(day.upstream) == 24


def test_unpartitioned_downstream_reads_every_planned_partition() -> None:
    daily = DailyPartitionsDefinition(start_date="2024-01-01")
    m = manifest(spec("d", partitions=daily), spec("report", ("d",)))
    plan = plan_run(
        m, keys("d", "report"), PartitionSelection(ranges=(("2024-01-01", "2024-01-03"),)), NOW
    )
    (report,) = [t for t in plan.tasks if str(t.key.asset) == "report"]
    assert len(report.upstream) == 3


def test_partitioned_asset_without_partitions_is_an_error() -> None:
    m = manifest(spec("d", partitions=DailyPartitionsDefinition(start_date="2024-01-01")))
    with pytest.raises(PartitionError, match=r"asset `d` is partitioned .*--partition"):
        plan_run(m, keys("d"), PartitionSelection(), NOW)


def test_bad_partition_key_names_asset_and_value() -> None:
    m = manifest(spec("d", partitions=StaticPartitionsDefinition(["eu", "us"])))
    with pytest.raises(PartitionError, match=r"asset `d`.*'asia'"):
        plan_run(m, keys("d"), PartitionSelection(keys=("asia",)), NOW)


def test_partitions_requested_for_unpartitioned_selection_is_an_error() -> None:
    m = manifest(spec("a"))
    with pytest.raises(PartitionError, match="none of the selected assets takes them"):
        plan_run(m, keys("a"), PartitionSelection(keys=("2024-01-01",)), NOW)


def test_upstream_outside_the_selection_is_not_planned() -> None:
    m = manifest(spec("a"), spec("b", ("a",)))
    plan = plan_run(m, keys("b"))
    assert [t.key.display() for t in plan.tasks] == ["b"]
    assert plan.tasks[0].upstream == ()


def _golden_manifest() -> Manifest:
    data = json.loads((GOLDEN / "manifest_shop.json").read_text())
    return Manifest.from_json_obj(data)


def _golden_plan() -> Plan:
    m = _golden_manifest()
    return plan_run(
        m,
        [AssetKey.parse(a.key) for a in m.assets],
        PartitionSelection(ranges=(("2024-01-01", "2024-01-03"),)),
        NOW,
    )


def test_plan_matches_golden_fingerprint() -> None:
    """A3-AC/§9.2: the fingerprint of a fixed manifest and request never changes silently."""
    plan = _golden_plan()
    expected = json.loads((GOLDEN / "plan_shop.json").read_text())
    spec_text = canonical_json(
        plan_spec(plan.code_version, plan.manifest_id, plan.assets, plan.partitions, plan.tasks)
    )
    assert json.loads(spec_text) == expected["spec"]
    assert plan.fingerprint == expected["fingerprint"]


SCRIPT = """
import json, sys
from datetime import UTC, datetime
from pathlib import Path
from servo.core.keys import AssetKey
from servo.core.manifest import Manifest
from servo.core.partitions import PartitionContext
from servo.core.planner import PartitionSelection, plan_run
m = Manifest.from_json_obj(json.loads(Path(sys.argv[1]).read_text()))
plan = plan_run(m, [AssetKey.parse(a.key) for a in m.assets],
                PartitionSelection(ranges=(("2024-01-01", "2024-01-03"),)),
                PartitionContext(now=datetime(2024, 6, 1, tzinfo=UTC)))
print(plan.fingerprint, [t.id for t in plan.tasks])
"""


@pytest.mark.parametrize("seed", ["0", "1", "12345", "random"])
def test_fingerprint_is_stable_across_processes_and_hash_seeds(seed: str) -> None:
    plan = _golden_plan()
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(GOLDEN / "manifest_shop.json")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.strip()
    assert out == f"{plan.fingerprint} {[t.id for t in plan.tasks]}"


def test_fingerprint_excludes_nothing_that_matters() -> None:
    m = _golden_manifest()
    base = _golden_plan()
    other = plan_run(
        m,
        [AssetKey.parse(a.key) for a in m.assets],
        PartitionSelection(ranges=(("2024-01-01", "2024-01-04"),)),
        NOW,
    )
    assert other.fingerprint != base.fingerprint
    changed = m.model_copy(update={"code_version": "cv2"})
    again = plan_run(
        changed,
        [AssetKey.parse(a.key) for a in changed.assets],
        PartitionSelection(ranges=(("2024-01-01", "2024-01-03"),)),
        NOW,
    )
    assert again.fingerprint != base.fingerprint


def test_streamed_fingerprint_text_is_the_canonical_spec() -> None:
    from servo.core.planner import plan_spec_text

    plan = _golden_plan()
    texts = [canonical_json(t.spec()) for t in plan.tasks]
    streamed = plan_spec_text(
        plan.code_version, plan.manifest_id, plan.assets, plan.partitions, texts
    )
    assert streamed == canonical_json(
        plan_spec(plan.code_version, plan.manifest_id, plan.assets, plan.partitions, plan.tasks)
    )
