"""A fake HealthDock: the vendor's API and webhooks, seeded data and faults, for tests,
benchmarks and the demo. It imports nothing of the mirror's: it stands in for the vendor.

    fake = FakeHealthDock(seed=1, patients=10_000, webhook_url=..., webhook_secret=...)
    app = create_app(fake)          # an ASGI app: httpx.ASGITransport(app) or uvicorn
    fake.mutate(10)                 # random changes, each sending a signed webhook
    await fake.webhooks.drain()     # wait until every webhook is delivered
    with serve_in_thread(fake) as base_url: ...  # on a real loopback socket
    {p.id: p for p in fake.patients()}  # the truth, to compare a mirror with
    FakeHealthDock(oauth_clients=[OAuthClient("id", ("http://app/cb",))])  # /oauth/: fake.oauth

Command line: ``python -m fake_healthdock --help``.
"""

from fake_healthdock.app import create_app
from fake_healthdock.clock import ManualClock
from fake_healthdock.connection import ConnectionDropped
from fake_healthdock.fake import ApiStats, FakeHealthDock
from fake_healthdock.faults import Faults
from fake_healthdock.oauth import OAuthClient, OAuthServer, OAuthStats, OAuthSwitches
from fake_healthdock.records import Appointment, Patient
from fake_healthdock.server import serve_in_thread
from fake_healthdock.store import Change, NotFound
from fake_healthdock.validation import InvalidField
from fake_healthdock.webhooks import SIGNATURE_HEADER, WebhookStats, WebhookSwitches, sign

__all__ = [
    "SIGNATURE_HEADER",
    "ApiStats",
    "Appointment",
    "Change",
    "ConnectionDropped",
    "FakeHealthDock",
    "Faults",
    "InvalidField",
    "ManualClock",
    "NotFound",
    "OAuthClient",
    "OAuthServer",
    "OAuthStats",
    "OAuthSwitches",
    "Patient",
    "WebhookStats",
    "WebhookSwitches",
    "create_app",
    "serve_in_thread",
    "sign",
]
