"""Pre-signed, distinct HealthDock events for the ingest benchmark, one per line.

Each line is ``<signature>\\t<body>``: the ``X-HealthDock-Signature`` value, a tab, and the exact
body bytes it signs. Signing happens here, before the run, so the load generator spends nothing
on HMAC and the bodies it sends are byte-for-byte the ones signed. Every event has its own ``id``
(and nearly every one its own record), so the receiver's deduplication never short-circuits a
request: each acknowledged request is a real insert plus a real apply.

    python -m bench.ingest.events --count 200000 --out /tmp/events.tsv
"""

from __future__ import annotations

import argparse
import json
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from receiver.signature import sign

# One event in this many is an appointment, the rest are new patients: the two kinds of write
# a hospital's day is made of, touching both mirrored tables and their indexes.
APPOINTMENT_EVERY = 10

_FIRST_NAMES = (
    "Asha",
    "Ravi",
    "Meera",
    "Arjun",
    "Kavya",
    "Rohan",
    "Isha",
    "Vikram",
    "Nisha",
    "Dev",
)
_LAST_NAMES = ("Iyer", "Sharma", "Patel", "Reddy", "Nair", "Gupta", "Khan", "Das", "Rao", "Singh")
_DOCTORS = ("DOC01", "DOC02", "DOC03", "DOC04", "DOC05")
_EPOCH = datetime(2024, 1, 12, 10, 30, tzinfo=UTC)
# HealthDock writes appointment times in the hospital's zone (India).
_IST = timezone(timedelta(hours=5, minutes=30))


def event_body(number: int, rng: random.Random) -> bytes:
    """The compact JSON body of event ``number`` (distinct ``id`` and record for each number)."""
    # Strictly increasing timestamps, so no event is stale against an earlier one.
    instant = _EPOCH + timedelta(milliseconds=number)
    timestamp = instant.strftime("%Y-%m-%dT%H:%M:%S.") + f"{instant.microsecond // 1000:03d}Z"
    data: dict[str, object]
    if number % APPOINTMENT_EVERY == APPOINTMENT_EVERY - 1:
        kind = "appointment.created"
        slot = _EPOCH + timedelta(days=20, minutes=30 * (number % 500))
        data = {
            "appointment_id": f"APT{number:07d}",
            "patient_id": f"PAT{_earlier_patient(number, rng):07d}",
            "doctor_id": rng.choice(_DOCTORS),
            "date_time": slot.astimezone(_IST).isoformat(),
            "duration": 30,
            "type": "consultation",
            "status": "scheduled",
        }
    else:
        kind = "patient.created"
        data = {
            "patient_id": f"PAT{number:07d}",
            "first_name": rng.choice(_FIRST_NAMES),
            "last_name": rng.choice(_LAST_NAMES),
            "date_of_birth": f"{1940 + number % 80}-{1 + number % 12:02d}-{1 + number % 28:02d}",
            "gender": "F" if number % 2 else "M",
            "phone": f"+9198{number % 100_000_000:08d}",
        }
    document = {"id": f"evt_{number:07d}", "event": kind, "timestamp": timestamp, "data": data}
    # Compact and ASCII-only: a body can never contain the tab or newline that frame a line.
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode()


def _earlier_patient(number: int, rng: random.Random) -> int:
    """A patient created earlier in the same file, so appointments point at real patients."""
    earlier = rng.randrange(number)
    return earlier - 1 if earlier % APPOINTMENT_EVERY == APPOINTMENT_EVERY - 1 else earlier


def write_events(path: Path, count: int, secret: bytes, *, seed: int = 1) -> None:
    """Write ``count`` signed events to ``path`` (same seed, same bytes)."""
    rng = random.Random(seed)  # the bench wants repeatable bodies, not secrecy
    tmp = path.with_name(path.name + ".part")
    with tmp.open("wb") as out:
        for number in range(count):
            body = event_body(number, rng)
            out.write(sign(body, secret).encode() + b"\t" + body + b"\n")
    # Renamed only when complete, so an interrupted run never leaves a short file behind.
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000, help="events to write")
    parser.add_argument("--out", type=Path, required=True, help="file to write")
    parser.add_argument("--secret", default="secret", help="HEALTHDOCK_WEBHOOK_SECRET to sign with")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    write_events(args.out, args.count, args.secret.encode(), seed=args.seed)
    print(f"wrote {args.count} signed events to {args.out}")


if __name__ == "__main__":
    main()
