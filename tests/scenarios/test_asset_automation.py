"""Asset automation on the embedded control plane: eager assets follow their upstreams, and
on_missing assets fill partitions once their inputs exist — each request made once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from servo.control.automation import automation_on_materializations, evaluate_automation
from servo.control.drain import drain_outbox

if TYPE_CHECKING:
    from conftest import ScenarioFactory

AUTOMATION_DEFS = """
from servo import DailyPartitionsDefinition

daily = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-04")


@asset
def source(context):
    record(context)
    return 1


@asset(automation="eager")
def cleaned(context, source):
    record(context)
    return source + 1


@asset(automation="eager")
def summary(context, cleaned):
    record(context)
    return cleaned + 1


@asset(partitions=daily)
def events(context):
    record(context)
    return context.partition_key


@asset(partitions=daily, automation="on_missing")
def events_clean(context, events):
    record(context)
    return events


defs = Definitions(assets=[source, cleaned, summary, events, events_clean])
"""


def test_eager_assets_follow_their_upstreams_once_per_change(scenario: ScenarioFactory) -> None:
    s = scenario(AUTOMATION_DEFS)
    automation_on_materializations(s.ports)  # starts following the ledger
    assert evaluate_automation(s.ports).requests == []  # nothing upstream is materialized

    def settle() -> list[Any]:
        drain_outbox(s.ports)
        made = automation_on_materializations(s.ports).requests
        for r in made:
            assert s.wait(r.run_id)["state"] == "SUCCEEDED"
        return made

    assert s.run("source")["state"] == "SUCCEEDED"
    [first] = settle()
    assert (first.asset, first.policy, first.created) == ("cleaned", "eager", True)
    assert first.run_key.startswith("automation:eager:cleaned:-:")
    [second] = settle()
    assert second.asset == "summary"
    assert settle() == []
    # Evaluating on a tick finds nothing new either: every request is deduplicated.
    assert evaluate_automation(s.ports).requests == []
    # A new materialization of the source starts the chain again, once.
    assert s.run("source")["state"] == "SUCCEEDED"
    assert [r.asset for r in settle()] == ["cleaned"]
    assert [r.asset for r in settle()] == ["summary"]
    assert len(s.effects_of("cleaned")) == 2
    assert len(s.effects_of("summary")) == 2
    run = s.get_run(first.run_id)
    assert run["trigger"]["type"] == "automation"


def test_on_missing_fills_partitions_once_their_inputs_exist(scenario: ScenarioFactory) -> None:
    s = scenario(AUTOMATION_DEFS)
    assert evaluate_automation(s.ports).requests == []  # no input yet
    assert s.run("events", partitions=["2024-01-02"])["state"] == "SUCCEEDED"
    made = evaluate_automation(s.ports).requests
    assert [(r.asset, r.partition) for r in made] == [("events_clean", "2024-01-02")]
    assert made[0].run_key == "automation:on_missing:events_clean:2024-01-02"
    assert evaluate_automation(s.ports).requests == []  # in flight: not asked again
    assert s.wait(made[0].run_id)["state"] == "SUCCEEDED"
    assert s.run("events", partitions=["2024-01-01", "2024-01-03"])["state"] == "SUCCEEDED"
    later = evaluate_automation(s.ports).requests
    assert sorted(r.partition for r in later if r.partition) == ["2024-01-01", "2024-01-03"]
    for r in later:
        assert s.wait(r.run_id)["state"] == "SUCCEEDED"
    assert evaluate_automation(s.ports).requests == []
    assert sorted(e["partition"] for e in s.effects_of("events_clean")) == [
        "2024-01-01",
        "2024-01-02",
        "2024-01-03",
    ]
