"""Servo's benchmark suite: ``./dev bench`` (or ``.venv/bin/python bench/run.py``).

    bench/run.py                      every benchmark, compared with the recorded Dagster anchor
    bench/run.py load plan            only these (load, plan, run)
    bench/run.py --with-dagster       also measure Dagster 1.13 now, in bench/.dagster-venv

Prints a table of the figures, their targets and the Servo/Dagster ratios (below 1: Servo is
faster), and writes every figure to bench/results/latest.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dagster_anchor
from bench_load import bench_load
from bench_plan import bench_plan
from bench_run import bench_run

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("load", "plan", "run")
# Benchmarks with tables of their own, run as separate programs after the ones above.
EXTRAS: dict[str, list[str]] = {
    "projections": ["projections.py", "--events", "1000000"],
    "automation": ["automation.py"],
    "events": ["event_latency.py", "--events", "100"],
    "gcp-costs": ["gcp_costs.py"],
    "serverless": ["serverless.py"],
}


@dataclass(frozen=True)
class Row:
    """One line of the table: a Servo figure, its target and what Dagster does."""

    benchmark: str
    metric: str
    unit: str
    servo: float
    target: float | None = None
    dagster: float | None = None
    anchor: str = ""  # "anchor (recorded)" or "anchor (measured now)"

    @property
    def ratio(self) -> float | None:
        """Servo / Dagster (below 1: Servo is faster or smaller)."""
        return self.servo / self.dagster if self.dagster else None

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        return "ok" if self.servo <= self.target else "MISSED"


def _anchor(
    measured: dict[str, Any] | None, path: tuple[str, ...], recorded_key: str | None
) -> tuple[float | None, str]:
    """The Dagster figure at ``path`` of the measured results, else the recorded one."""
    if measured is not None:
        value: Any = measured
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            return float(value), "anchor (measured now)"
    if recorded_key is not None:
        return float(dagster_anchor.RECORDED[recorded_key]), "anchor (recorded)"
    return None, ""


def build_rows(servo: dict[str, Any], dagster: dict[str, Any] | None) -> list[Row]:
    """The table's rows for whichever benchmarks ran."""
    rows: list[Row] = []
    if "load" in servo:
        s = servo["load"]
        size = f"{s['assets']} assets"
        rows += [
            Row(
                "load",
                f"fresh process: load Definitions + build and write manifest ({size})",
                "s",
                s["load_s"],
                1.0,
                *_anchor(dagster, ("load", "load_s"), "load_s"),
            ),
            Row(
                "load",
                "same, first run (compiles the project's bytecode)",
                "s",
                s["load_cold_s"],
                None,
                *_anchor(dagster, ("load", "load_cold_s"), None),
            ),
            Row(
                "load",
                "same, CPU time of the process (user + system)",
                "s",
                s["load_cpu_s"],
                None,
                *_anchor(dagster, ("load", "load_cpu_s"), None),
            ),
            Row(
                "load",
                "`servo validate` vs `dagster definitions validate`",
                "s",
                s["validate_cli_s"],
                None,
                *_anchor(dagster, ("load", "validate_cli_s"), "validate_cli_s"),
            ),
        ]
    if "plan" in servo:
        s = servo["plan"]
        rows += [
            Row("plan", f"plan_run: {s['tasks']:,} tasks", "s", s["plan_s"], 3.0),
            Row("plan", "peak RSS of the planning process", "MB", s["peak_rss_mb"], 1024.0),
        ]
    for shape in ("chain", "fanout"):
        if "run" not in servo:
            break
        s = servo["run"][shape]
        name = f"run {shape} ({s['tasks']} tasks)"
        rows += [
            Row(
                name,
                "run's own duration per task vs materialize() per step, sqlite",
                "ms",
                s["run_ms_per_task"],
                5.0,
                *_anchor(dagster, (shape, "sqlite", "ms_per_step"), f"{shape}_sqlite_ms_per_step"),
            ),
            Row(
                name,
                "run's own duration per task vs materialize() per step, in-memory",
                "ms",
                s["run_ms_per_task"],
                5.0,
                *_anchor(dagster, (shape, "memory", "ms_per_step"), f"{shape}_memory_ms_per_step"),
            ),
            Row(
                name,
                f"  of which: run created -> first task started ({s['to_first_task_s']:.2f} s); "
                "per task after that",
                "ms",
                s["after_first_task_ms_per_task"],
            ),
            Row(
                name,
                "end-to-end wall per task (CLI start-up, deploy) vs process wall per step",
                "ms",
                s["wall_ms_per_task"],
                5.0,
                *_anchor(dagster, (shape, "sqlite", "wall_ms_per_step"), None),
            ),
            Row(
                name,
                "CPU time per task, whole process tree vs materialize() process, sqlite",
                "ms",
                s["cpu_ms_per_task"],
                None,
                *_anchor(dagster, (shape, "sqlite", "cpu_ms_per_step"), None),
            ),
            Row(
                name,
                "peak RSS, whole process tree (summed RSS) vs materialize() process",
                "MB",
                s["peak_tree_rss_mb"],
                None,
                *_anchor(dagster, (shape, "sqlite", "peak_rss_mb"), None),
            ),
            Row(
                name,
                "peak PSS, whole process tree (shared pages split)",
                "MB",
                s["peak_tree_pss_mb"],
            ),
        ]
    return rows


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def print_table(rows: list[Row]) -> None:
    """Print the rows as an aligned table."""
    header = ("benchmark", "metric", "servo", "target", "", "dagster", "servo/dagster", "source")
    lines = [
        (
            r.benchmark,
            r.metric,
            _fmt(r.servo, r.unit),
            _fmt(r.target, r.unit),
            r.verdict,
            _fmt(r.dagster, r.unit),
            f"{r.ratio:.3f}" if r.ratio is not None else "-",
            r.anchor,
        )
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]
    for line in [header, tuple("-" * w for w in widths), *lines]:
        print("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        description="Run Servo's benchmarks and compare them with Dagster 1.13."
    )
    p.add_argument(
        "benchmarks",
        nargs="*",
        metavar="BENCHMARK",
        help=(
            f"{', '.join(BENCHMARKS)} (the default), {', '.join(EXTRAS)} "
            "(the projections, automation and Google Cloud benchmarks; the last three start "
            "the emulators) or all"
        ),
    )
    p.add_argument(
        "--with-dagster",
        action="store_true",
        help="measure Dagster 1.13 now (installs it once into bench/.dagster-venv)",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per figure; medians are reported")
    p.add_argument("--assets", type=int, default=1000, help="assets in the load/plan projects")
    p.add_argument("--partitions", type=int, default=100, help="daily partitions to plan")
    p.add_argument("--chain", type=int, default=100, help="length of the run chain")
    p.add_argument("--fanout", type=int, default=500, help="width of the run fan-out")
    p.add_argument(
        "--out", type=Path, default=HERE / "results" / "latest.json", help="JSON results file"
    )
    p.add_argument("--keep", action="store_true", help="keep the generated projects")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    unknown = [b for b in args.benchmarks if b not in (*BENCHMARKS, *EXTRAS, "all")]
    if unknown:
        p.error(
            f"unknown benchmark {unknown[0]!r}; choose from "
            f"{', '.join((*BENCHMARKS, *EXTRAS))} or all"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks, print the table and write the JSON results."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    wanted = set(args.benchmarks)
    if not wanted:
        selected = set(BENCHMARKS)
    elif "all" in wanted:
        selected = {*BENCHMARKS, *EXTRAS}
    else:
        selected = wanted
    work = Path(tempfile.mkdtemp(prefix="servo-bench-"))
    servo: dict[str, Any] = {}
    dagster: dict[str, Any] | None = None
    dagster_note = "not requested (--with-dagster measures it now)"
    started = time.time()
    load_before = os.getloadavg()[0]
    for name in BENCHMARKS:
        if name not in selected:
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        if name == "load":
            servo["load"] = bench_load(work, args.assets, args.repeat)
        elif name == "plan":
            servo["plan"] = bench_plan(work, args.assets, args.partitions, args.repeat)
        else:
            servo["run"] = bench_run(work, args.chain, args.fanout, args.repeat)
    if args.with_dagster and selected & {"load", "run"}:
        version, why = dagster_anchor.ensure_venv()
        if version is None:
            dagster_note = f"could not be installed: {why}"
            print(f"Dagster {dagster_note}; using the recorded anchor", file=sys.stderr)
        else:
            print(f"running the Dagster {version} programs ...", file=sys.stderr, flush=True)
            dagster = dagster_anchor.measure_dagster(
                work,
                n_assets=args.assets,
                chain_length=args.chain,
                fan_width=args.fanout,
                times=args.repeat,
                benches=selected,
            )
            dagster_note = f"measured now with dagster {version}"
    rows = build_rows(servo, dagster)
    for name, command in EXTRAS.items():
        if name in selected:
            print(f"\n== {name}: bench/{command[0]} ==", flush=True)
            subprocess.run([sys.executable, str(HERE / command[0]), *command[1:]], check=False)
    if not rows:
        return 0
    load_after = os.getloadavg()[0]
    print()
    print_table(rows)
    print(f"\nDagster: {dagster_note}. Ratios below 1 mean Servo is faster (or smaller).")
    cpus = os.cpu_count() or 1
    print(f"Load average: {load_before:.2f} before, {load_after:.2f} after ({cpus} CPUs).")
    # The figure after includes the benchmarks themselves; the one before is other work.
    if load_before > cpus / 2:
        print(
            "warning: the machine was busy with other work; wall times are inflated "
            "(the CPU-time rows are less affected)."
        )
    results = {
        "meta": {
            "command": " ".join(["bench/run.py", *(sys.argv[1:] if argv is None else argv)]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": round(time.time() - started, 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "servo": servo,
        "dagster": {
            "note": dagster_note,
            "measured": dagster,
            "recorded": dagster_anchor.RECORDED,
        },
        "rows": [{**asdict(r), "ratio": r.ratio, "verdict": r.verdict} for r in rows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results written to {args.out}")
    if args.keep:
        print(f"generated projects kept in {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
