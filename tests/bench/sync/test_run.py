"""bench/sync/run.py: its flags, and the figures and verdicts it reports from given runs."""

from __future__ import annotations

from pathlib import Path

from bench.sync.run import (
    FIRST_PASS,
    SECOND_PASS,
    Measured,
    MemoryRun,
    ThroughputRun,
    parse_args,
    remove_sqlite,
    report_memory,
    report_throughput,
    summarize_throughput,
)


def measured(wall_s: float, cpu_s: float, rss_kib: int = 100 * 1024) -> Measured:
    return Measured(
        command="x",
        wall_s=wall_s,
        returncode=0,
        timed_out=False,
        cpu_s=cpu_s,
        max_rss_kib=rss_kib,
        hwm_kib=None,
        rss_samples=[],
    )


def run(
    tool: str,
    round_number: int,
    wall_s: float,
    cpu_s: float,
    *,
    scenario: str = "no latency",
    patients: int = 200_000,
    pass_number: int = FIRST_PASS,
) -> ThroughputRun:
    return ThroughputRun(
        scenario=scenario,
        database="sqlite",
        round=round_number,
        tool=tool,
        patients=patients,
        measured=measured(wall_s, cpu_s),
        rows=patients,
        records_per_s=patients / wall_s,
        requests=patients // 100,
        fake_cpu_s=0.0,
        loadavg=(0.0, 0.0, 0.0),
        pass_number=pass_number,
        write_disposition="merge" if tool == "dlt" else None,
        primary_keys=True if tool == "dlt" else None,
    )


def test_sizes_default_to_the_goals_and_smoke_leaves_out_the_million() -> None:
    args = parse_args([])
    assert args.patient_list == [20_000, 200_000]
    assert args.mem_size_list == [10_000, 200_000, 1_000_000]
    assert args.second_pass
    assert args.dlt_write_disposition == "merge"
    assert args.dlt_primary_keys
    smoke = parse_args(["--smoke"])
    assert max(smoke.patient_list) <= 1_000
    assert max(smoke.mem_size_list) <= 2_000
    assert smoke.second_pass
    assert parse_args(["--patients", "30000", "--no-second-pass"]).patient_list == [30_000]


def test_cpu_ratio_is_the_median_of_each_rounds_ratio_and_gets_its_verdict() -> None:
    runs = [
        run("ours", 1, 10.0, 4.0),
        run("dlt", 1, 20.0, 10.0),  # 0.4
        run("ours", 2, 10.0, 6.0),
        run("dlt", 2, 20.0, 10.0),  # 0.6
        run("ours", 3, 10.0, 4.5),
        run("dlt", 3, 20.0, 10.0),  # 0.45
        run("ours", 1, 3.0, 3.0, pass_number=SECOND_PASS),
        run("dlt", 1, 20.0, 10.0, pass_number=SECOND_PASS),
    ]
    rows = summarize_throughput(runs)
    ours = next(r for r in rows if r["tool"] == "ours" and r["pass"] == FIRST_PASS)
    assert ours["cpu_ratio"] == 0.45
    assert ours["ratio"] == 2.0  # records/s: dlt wall / ours wall
    assert ours["median_cpu_s_per_record"] == 4.5 / 200_000
    steady = next(r for r in rows if r["tool"] == "ours" and r["pass"] == SECOND_PASS)
    assert steady["median_records_per_cpu_s"] == 200_000 / 3.0
    report = report_throughput(runs, rows, None)
    assert "CPU per record ours/dlt <= 0.5: ok (0.45x)" in report
    assert "ours >= 5x dlt's records/s: MISSED (2.00x)" in report
    assert "ours' second pass at 200000 patients >= 50,000 records per CPU-second: ok" in report
    assert "dlt (merge, PK)" in report


def test_latency_scenario_is_judged_on_dlt_wall_over_ours() -> None:
    scenario = "latency 50-150 ms"
    runs = [
        run("ours", 1, 2.5, 3.0, scenario=scenario, patients=20_000),
        run("dlt", 1, 25.0, 3.0, scenario=scenario, patients=20_000),
    ]
    report = report_throughput(runs, summarize_throughput(runs), None)
    assert "dlt wall / ours wall >= 8: ok (10.00x)" in report
    assert "CPU per record ours/dlt <= 0.5" not in report  # judged without latency only


def test_memory_is_flat_when_the_largest_peak_is_within_the_goal_of_the_smallest() -> None:
    runs = [
        MemoryRun(patients=n, round=1, measured=measured(1.0, 1.0, mib * 1024), rows=n, sync_run={})
        for n, mib in ((10_000, 100), (200_000, 105), (1_000_000, 118))
    ]
    report = report_memory(runs)
    assert "peak RSS at 200000 patients / at 10000: 1.05x" in report
    assert "goal (flat): peak RSS at 1000000 patients <= 1.2x that at 10000: ok (1.18x)" in report


def test_remove_sqlite_takes_dlts_staging_file_too(tmp_path: Path) -> None:
    names = ["a-dlt.db", "a-dlt.db-wal", "a-dlt__main_staging.db", "a-dlt-b.db", "a-dlt2.db"]
    for name in names:
        (tmp_path / name).write_text("")
    remove_sqlite(tmp_path / "a-dlt.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-dlt-b.db", "a-dlt2.db"]
