"""``python -m fake_healthdock`` serves the fake on a loopback port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def test_the_command_line_serves_the_api() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "fake_healthdock",
        "--port",
        str(port),
        "--patients",
        "120",
        "--seed",
        "5",
        "--api-key",
        "k",
        "--rate-limit",
        "50",
        "--window",
        "30",
        "--latency",
        "0",
        "0.001",
        "--storm-seconds",
        "0.5",
        "--spike-rate",
        "0.01",
        "--mutations-per-second",
        "20",
        "--log-level",
        "warning",
    ]
    server = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        response = _first_answer(f"http://127.0.0.1:{port}/v1/patients?limit=5", "k")
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "50"
        assert response.json()["data"]["patients"][0]["id"] == "PAT000001"
        faults = httpx.get(f"http://127.0.0.1:{port}/_fake/faults").json()["data"]
        assert (faults["storm_seconds"], faults["spike_rate"]) == (0.5, 0.01)
        deadline = time.monotonic() + 5
        while (
            httpx.get(f"http://127.0.0.1:{port}/_fake/stats").json()["data"]["webhooks"]["events"]
            == 0
        ):
            assert time.monotonic() < deadline, "no mutations were made"
            time.sleep(0.05)
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=10)
    assert "120 patients, 240 appointments (seed 5)" in errors


def test_bad_options_are_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fake_healthdock", "--latency", "0.2", "0.1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "latency" in result.stderr


def _first_answer(url: str, api_key: str) -> httpx.Response:
    deadline = time.monotonic() + 15
    while True:
        try:
            return httpx.get(url, headers={"Authorization": f"Bearer {api_key}"})
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the fake did not start"
            time.sleep(0.05)


def test_webhooks_need_a_secret() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fake_healthdock", "--webhook-url", "http://127.0.0.1:9/hooks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--webhook-secret" in result.stderr


def test_bad_storm_length_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fake_healthdock", "--storm-rate", "0.1", "--storm-seconds", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--storm-seconds" in result.stderr
