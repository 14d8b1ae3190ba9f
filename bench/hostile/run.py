"""Hostile-input benchmark: what a request that fails verification costs the receiver, and how
far a flood of them moves honest webhooks' latency.

The probe's attack (issue 16): without the signature header, a 1 MB body of nested arrays with
a made-up top-level ``"signature"`` member. Each round starts the receiver of this checkout
("ours") and, side by side, that of a baseline commit ("baseline", by default the one before the
fix), alternating, each on a fresh SQLite file:

1. CPU per refused request, by shape, read from the server's /proc counters over a burst;
2. honest signed webhooks sent one at a time at a steady pace, p50/p99 of their latency and of
   ``/healthz``, once alone and once while flooders send the attack (the probe's four senders at
   1.5 requests/s each, then as fast as they can).

    .venv/bin/python -m bench.hostile.run                     # 5 rounds
    .venv/bin/python -m bench.hostile.run --rounds 1 --seconds 3   # a smoke run
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.ingest.events import event_body
from bench.ingest.run import _process_cpu_seconds, running_server
from receiver.signature import SIGNATURE_HEADER, sign

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SECRET = "bench-secret"
BASELINE_REF = "9cd3465"  # the last commit before the issue-16 fixes
ZEROS = "sha256=" + "0" * 64


def attack_body(size: int = 1_000_000) -> bytes:
    """The probe's body: a made-up embedded signature over ~1 MB of nested arrays."""
    count = (size - 100) // 12
    return (
        b'{"signature":"'
        + ZEROS.encode()
        + b'","data":['
        + b",".join([b"[[[[[1]]]]]"] * count)
        + b"]}"
    )


SHAPES: dict[str, tuple[bytes, dict[str, str]]] = {
    # name: (body, headers); none of them is signed with the server's secret.
    "header form, 1 MB nested, wrong signature": (attack_body(), {SIGNATURE_HEADER: ZEROS}),
    "body form, 1 MB nested (the probe's)": (attack_body(), {}),
    "body form, 16 KB pretty-printed": (
        json.dumps({"signature": ZEROS, "data": [[i] for i in range(1000)]}, indent=1)
        .encode()[:16_000]
        .rsplit(b",", 1)[0]
        + b"]}",
        {},
    ),
}


def _post(connection: http.client.HTTPConnection, body: bytes, headers: dict[str, str]) -> int:
    connection.request("POST", "/webhooks/healthdock", body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    return response.status


def cpu_per_request(pid: int, port: int, body: bytes, headers: dict[str, str], n: int) -> float:
    """Milliseconds of server CPU per request, over ``n`` requests on one connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json", **headers}
    _post(connection, body, headers)  # warm
    before = _process_cpu_seconds(pid)
    for _ in range(n):
        status = _post(connection, body, headers)
        assert status in (400, 401), status
    spent = _process_cpu_seconds(pid) - before
    connection.close()
    return spent / n * 1000


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def latency_under_flood(
    port: int,
    seconds: float,
    flooders: int,
    rate: float | None,
    first_event: int,
    attack_headers: dict[str, str],
) -> dict[str, float]:
    """Honest webhooks every 20 ms and /healthz every 100 ms, while ``flooders`` threads send
    the attack at ``rate`` requests/s each (None: as fast as they can)."""
    stop = threading.Event()
    attack = attack_body()
    sent = [0]

    def flood() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while not stop.is_set():
            started = time.monotonic()
            try:
                _post(connection, attack, {"Content-Type": "application/json", **attack_headers})
                sent[0] += 1
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            if rate is not None:
                stop.wait(max(0.0, 1 / rate - (time.monotonic() - started)))

    def paced(every: float, call: Callable[[http.client.HTTPConnection, int], None]) -> list[float]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        latencies: list[float] = []
        number = 0
        next_at = time.monotonic()
        while not stop.is_set():
            started = time.monotonic()
            call(connection, number)
            latencies.append((time.monotonic() - started) * 1000)
            number += 1
            next_at += every
            stop.wait(max(0.0, next_at - time.monotonic()))
        return latencies

    rng = random.Random(first_event)

    def honest(connection: http.client.HTTPConnection, number: int) -> None:
        body = event_body(first_event + number, rng)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(body, SECRET.encode()),
        }
        assert _post(connection, body, headers) == 200

    def health(connection: http.client.HTTPConnection, _: int) -> None:
        connection.request("GET", "/healthz")
        connection.getresponse().read()

    results: dict[str, list[float]] = {}
    threads = [threading.Thread(target=flood, daemon=True) for _ in range(flooders)]
    workers = {
        "webhook": threading.Thread(
            target=lambda: results.__setitem__("webhook", paced(0.02, honest))
        ),
        "healthz": threading.Thread(
            target=lambda: results.__setitem__("healthz", paced(0.1, health))
        ),
    }
    for thread in [*threads, *workers.values()]:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in [*workers.values(), *threads]:
        thread.join(timeout=120)
    return {
        "webhook_p50_ms": _percentile(results["webhook"], 0.5),
        "webhook_p99_ms": _percentile(results["webhook"], 0.99),
        "healthz_p99_ms": _percentile(results["healthz"], 0.99),
        "attacks_per_s": sent[0] / seconds,
    }


def baseline_tree(ref: str, workdir: Path) -> Path:
    tree = workdir / "baseline"
    add = ["worktree", "add", "--detach", str(tree), ref]
    subprocess.run(["git", "-C", str(ROOT), *add], check=True, capture_output=True)
    return tree


def one_round(
    server: str, tree: Path, workdir: Path, args: argparse.Namespace, n: int
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHDOCK_")}
    env.update(
        HEALTHDOCK_DATABASE_URL=f"sqlite:///{workdir / f'{server}-{n}.db'}",
        HEALTHDOCK_WEBHOOK_SECRET=SECRET,
        HEALTHDOCK_PORT=str(args.port),
        HEALTHDOCK_LOG_LEVEL="WARNING",
        PYTHONPATH=str(tree),
    )
    command = [sys.executable, "-m", "healthdock_mirror", "serve", "--no-scheduler"]
    log = workdir / f"{server}-{n}.log"
    with running_server(command, env, tree, "127.0.0.1", args.port, log) as process:
        result: dict[str, Any] = {"server": server, "round": n}
        for name, (body, headers) in SHAPES.items():
            result[f"cpu_ms: {name}"] = cpu_per_request(
                process.pid, args.port, body, headers, args.requests
            )
        phases: list[tuple[str, int, float | None, dict[str, str]]] = [
            ("alone", 0, None, {}),
            ("probe's flood (4 x 1.5/s, body form)", 4, 1.5, {}),
            ("full flood, body form", 4, None, {}),
            # What any unauthenticated client could always cost: the same bytes, header form.
            ("full flood, header form", 4, None, {SIGNATURE_HEADER: ZEROS}),
        ]
        for index, (label, flooders, rate, attack_headers) in enumerate(phases):
            first_event = n * 10**6 + index * 10**5  # every honest event is a new one
            for key, value in latency_under_flood(
                args.port, args.seconds, flooders, rate, first_event, attack_headers
            ).items():
                result[f"{label}: {key}"] = value
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="each latency phase")
    parser.add_argument("--requests", type=int, default=10, help="per shape, for CPU")
    parser.add_argument("--port", type=int, default=8771)
    parser.add_argument("--baseline", default=BASELINE_REF, help="git ref of the baseline")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        workdir = Path(tmp)
        trees = {"ours": ROOT, "baseline": baseline_tree(args.baseline, workdir)}
        try:
            runs = [
                one_round(server, trees[server], workdir, args, n)
                for n in range(args.rounds)
                for server in (("ours", "baseline") if n % 2 == 0 else ("baseline", "ours"))
            ]
        finally:
            remove = ["worktree", "remove", "--force", str(trees["baseline"])]
            subprocess.run(["git", "-C", str(ROOT), *remove], check=False, capture_output=True)
    keys = [k for k in runs[0] if k not in ("server", "round")]
    print(f"| measure (median of {args.rounds} rounds) | ours | baseline {args.baseline} |")
    print("|---|---:|---:|")
    for key in keys:
        medians = [
            statistics.median(r[key] for r in runs if r["server"] == s)
            for s in ("ours", "baseline")
        ]
        print(f"| {key} | {medians[0]:.1f} | {medians[1]:.1f} |")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / f"hostile-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(
        json.dumps(runs, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
