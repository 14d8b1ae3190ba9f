"""Crash durability: is every acknowledged event still there after the receiver is SIGKILLed?

A sender process posts distinct signed events without pause and notes every one that got a
2xx. Meanwhile the receiver (``healthdock-mirror serve``, in its own process group so that its
committer child dies with it) is killed with SIGKILL at a random moment, restarted, and killed
again, ``kills`` times. Afterwards every acknowledged event must be in ``webhook_events``,
applied, with its record in the mirror. Events that were stored but never acknowledged (the
kill fell between commit and answer) are fine: HealthDock retries them and dedup absorbs it.

    python -m tests.reliability.crash_harness --kills 20 --database sqlite:////tmp/crash.db

The receiver command is a parameter so that the harness's own test can point it at a broken
receiver (one that acknowledges before committing) and see it caught.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import select

from mirror.database import create_mirror_engine
from mirror.migrate import upgrade
from mirror.schema import patients, webhook_events
from tests.factories import encode, event, patient, signed
from tests.support.services import COMMAND, environment, free_port, service

RECEIVER = COMMAND
_URL_PATH = "/webhooks/healthdock"


@dataclass(frozen=True)
class CrashReport:
    kills: int
    acknowledged: int
    stored: int  # acknowledged events found stored and applied, with their record mirrored
    lost: int
    stored_unacknowledged: int  # committed, but the answer never reached the sender

    def line(self) -> str:
        return (
            f"kills={self.kills} acknowledged={self.acknowledged} stored={self.stored} "
            f"lost={self.lost} stored-but-unacknowledged={self.stored_unacknowledged}"
        )


def _send_forever(port: int, acknowledged: Path, connections: int) -> None:
    """The sender process: distinct events from ``connections`` concurrent senders; each
    acknowledged event id is appended (and flushed) to ``acknowledged`` as soon as its 2xx
    arrives. Runs until SIGTERM."""

    async def sender(number: int, client: httpx.AsyncClient, out: object) -> None:
        sent = 0
        while True:
            sent += 1
            event_id = f"crash-{os.getpid()}-{number}-{sent}"
            body = encode(event("patient.created", patient(f"PAT-{event_id}"), event_id=event_id))
            try:
                response = await client.post(_URL_PATH, content=body, headers=signed(body))
            except httpx.TransportError:
                await asyncio.sleep(0.02)  # the receiver is down: try the next event soon
                continue
            if 200 <= response.status_code < 300:
                out.write(event_id + "\n")  # type: ignore[attr-defined]
                out.flush()  # type: ignore[attr-defined]

    async def run() -> None:
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=10, limits=limits
        ) as client:
            with acknowledged.open("a", buffering=1) as out:
                await asyncio.gather(*(sender(n, client, out) for n in range(connections)))

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(run())


def run_crashes(
    database_url: str,
    *,
    kills: int = 10,
    receiver: Sequence[str] = RECEIVER,
    workdir: Path | None = None,
    seed: int | None = None,
    up_seconds: tuple[float, float] = (0.3, 1.5),
    connections: int = 16,
) -> CrashReport:
    """Kill the receiver ``kills`` times under load, then count what was acknowledged and lost."""
    chance = random.Random(seed)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="crash-"))
    engine = create_mirror_engine(database_url)
    upgrade(engine)
    port = free_port()
    acknowledged_file = workdir / "acknowledged.txt"
    acknowledged_file.write_text("")
    sender = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys; from pathlib import Path; "
            "from tests.reliability.crash_harness import _send_forever; "
            "_send_forever(int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))",
            str(port), str(acknowledged_file), str(connections),
        ],
    )  # fmt: skip
    try:
        env = environment(database_url, port=port)
        url = f"http://127.0.0.1:{port}"
        for _ in range(kills):
            arguments = ["serve", "--no-scheduler"]
            log = workdir / "receiver.log"
            with service(arguments, env, log, url=url, command=receiver) as running:
                time.sleep(chance.uniform(*up_seconds))
                running.kill()  # SIGKILL of the whole process group, committer included
    finally:
        sender.terminate()
        sender.wait()
    acknowledged = set(acknowledged_file.read_text().split())
    with engine.connect() as connection:
        applied = set(
            connection.execute(
                select(webhook_events.c.event_id).where(webhook_events.c.status == "applied")
            ).scalars()
        )
        mirrored = {
            record_id.removeprefix("PAT-")
            for record_id in connection.execute(
                select(patients.c.id).where(patients.c.raw.is_not(None))
            ).scalars()
        }
    engine.dispose()
    safe = acknowledged & applied & mirrored
    return CrashReport(
        kills=kills,
        acknowledged=len(acknowledged),
        stored=len(safe),
        lost=len(acknowledged - safe),
        stored_unacknowledged=len(applied - acknowledged),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, help="a database URL (migrated here)")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    report = run_crashes(args.database, kills=args.kills, seed=args.seed)
    print(report.line())
    return 1 if report.lost or not report.acknowledged else 0


if __name__ == "__main__":
    sys.exit(main())
