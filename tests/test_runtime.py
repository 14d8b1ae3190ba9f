"""A process of the service settles its garbage collector once started; the tests' does not."""

from __future__ import annotations

import gc
import subprocess
import sys

from click.testing import CliRunner

from healthdock_mirror.cli import main

# Runs the command line as its console script does, then reports the collector's state.
_AS_A_PROGRAM = """
import atexit, gc
atexit.register(lambda: print("GC", gc.get_threshold(), gc.get_freeze_count() > 10_000))
from healthdock_mirror.cli import main
main(["--version"])
"""


def test_the_command_line_freezes_what_it_loaded_and_collects_in_larger_rounds() -> None:
    ran = subprocess.run(
        [sys.executable, "-c", _AS_A_PROGRAM], capture_output=True, text=True, check=False
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1] == "GC (10000, 10, 10) True"


def test_a_process_that_only_imports_the_command_line_keeps_its_collector() -> None:
    before = (gc.get_threshold(), gc.get_freeze_count())
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert (gc.get_threshold(), gc.get_freeze_count()) == before
