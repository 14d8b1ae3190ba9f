"""bench.processes: the CPU accounting the ingest benchmark's table of CPU per event reads, and
the bytecode the sync benchmark's commands start from."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.processes import (
    RESULT_MARKER,
    BenchError,
    compile_bytecode,
    cpu_between,
    cpu_seconds,
    descendants,
    processes_named,
    project_packages,
    run_reporting,
)

# A child that starts a grandchild spinning on a core, and waits for it.
_SPINNER = (
    "import subprocess, sys; "
    "subprocess.run([sys.executable, '-c', 'import time\\nend = time.time() + 30\\n"
    "while time.time() < end: pass'])"
)


def test_a_grandchild_started_in_between_is_found_and_counted_whole() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", _SPINNER])
    grandchildren: list[int] = []
    try:
        deadline = time.monotonic() + 10
        while not grandchildren and time.monotonic() < deadline:
            time.sleep(0.05)
            grandchildren = descendants(spinner.pid)
        (grandchild,) = grandchildren
        time.sleep(1.0)
        after = cpu_seconds([spinner.pid, *descendants(spinner.pid)])
        assert grandchild in after
        # The loop ran for a second on a core of its own, give or take the machine's load;
        # its parent only waited.
        assert cpu_between({}, after) > 0.2
        assert after[grandchild] > after[spinner.pid]
        # Counted once: a second reading adds only what was spent since.
        assert cpu_between(after, after) == 0.0
    finally:
        for pid in grandchildren:
            subprocess.run(["kill", "-9", str(pid)], check=False)
        spinner.kill()
        spinner.wait()


def test_a_process_that_ended_in_between_is_not_counted_negative() -> None:
    assert cpu_between({123456789: 5.0}, {}) == 0.0
    assert cpu_between({1: 5.0}, {1: 7.5, 2: 1.0}) == 3.5


def test_processes_are_found_by_command_name() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.monotonic() + 10  # until the fork has become sleep
        while sleeper.pid not in processes_named("sleep") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sleeper.pid in processes_named("sleep")
        assert sleeper.pid not in processes_named("postgres")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_ready_callback_comes_once_the_script_has_loaded_and_not_before(
    tmp_path: Path,
) -> None:
    ready = tmp_path / "events.ready.0"
    # Loads for half a second, says so, then runs for half a second and reports.
    script = (
        "import pathlib, sys, time; time.sleep(0.5); pathlib.Path(sys.argv[1]).touch(); "
        f"time.sleep(0.5); print('{RESULT_MARKER}' + '{{}}')"
    )
    seen: list[float] = []
    began = time.monotonic()
    result = run_reporting(
        [sys.executable, "-c", script, str(ready)],
        timeout_s=30,
        ready=[ready],
        on_ready=lambda: seen.append(time.monotonic() - began),
    )
    assert result.result == {}
    (at,) = seen
    assert 0.5 <= at < result.wall_s - 0.3  # after the loading, well before the end


def test_a_script_that_never_says_it_loaded_is_an_error_not_a_run(tmp_path: Path) -> None:
    script = f"print('{RESULT_MARKER}' + '{{}}')"
    with pytest.raises(BenchError, match="without creating"):
        run_reporting(
            [sys.executable, "-c", script],
            timeout_s=30,
            ready=[tmp_path / "never.0"],
            on_ready=lambda: None,
        )


def _tree(root: Path, packages: dict[str, str]) -> Path:
    """A checkout of one module a package, listed in its pyproject.toml as ours is."""
    listed = ", ".join(f'"{name.split("/")[0]}*"' for name in packages)
    (root / "pyproject.toml").write_text(f"[tool.setuptools.packages.find]\ninclude = [{listed}]\n")
    for name, source in packages.items():
        module = root / name
        module.parent.mkdir(parents=True, exist_ok=True)
        (module.parent / "__init__.py").write_text("")
        module.write_text(source)
    return root


def test_a_tree_gets_the_bytecode_its_commands_then_start_from(tmp_path: Path) -> None:
    tree = _tree(tmp_path, {"mirror/records.py": "VALUE = 42\n"})
    (tmp_path / "loose.py").write_text("LOOSE = 1\n")  # not a package the project installs
    compile_bytecode(tree)
    package = tmp_path / "mirror"
    cached = {path.name.split(".")[0] for path in (package / "__pycache__").glob("*.pyc")}
    assert cached == {"__init__", "records"}
    assert not (tmp_path / "__pycache__").exists()
    # A command with PYTHONDONTWRITEBYTECODE (as on this workplace's machines) loads it.
    started = subprocess.run(
        [sys.executable, "-v", "-c", "import mirror.records"],
        cwd=tmp_path,
        env={"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = str(package / "__pycache__" / f"records.{sys.implementation.cache_tag}.pyc")
    assert f"code object from '{loaded}'" in started.stderr


def test_a_tree_that_does_not_compile_stops_the_benchmark(tmp_path: Path) -> None:
    tree = _tree(tmp_path, {"sync/client.py": "def broken(:\n"})
    with pytest.raises(BenchError, match="does not compile"):
        compile_bytecode(tree)


def test_the_packages_compiled_are_the_ones_this_project_installs() -> None:
    root = Path(__file__).resolve().parents[2]
    packages = project_packages(root)
    assert {"config", "mirror", "receiver", "sync", "healthdock_mirror"} <= set(packages)
    assert all((root / package / "__init__.py").is_file() for package in packages)
