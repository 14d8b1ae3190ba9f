"""``python -m fake_healthdock``: serve a fake HealthDock on a loopback port."""

from __future__ import annotations

from datetime import date, datetime

import click

from fake_healthdock.fake import FakeHealthDock
from fake_healthdock.faults import Faults
from fake_healthdock.oauth import AUTHORIZE_PATH, OAuthClient
from fake_healthdock.server import serve
from fake_healthdock.webhooks import WebhookSwitches

_RATE = click.FloatRange(0.0, 1.0)
_SECONDS = click.FloatRange(0.0)


@click.command(context_settings={"show_default": True, "max_content_width": 100})
@click.option("--host", default="127.0.0.1", help="Interface to listen on.")
@click.option("--port", default=8900, type=click.IntRange(0, 65535))
@click.option("--patients", default=10_000, type=click.IntRange(0, 5_000_000))
@click.option("--appointments-per-patient", default=2.0, type=click.FloatRange(0.0, 20.0))
@click.option("--seed", default=1, type=int, help="Same seed, sizes and anchor: same data.")
@click.option("--anchor", type=click.DateTime(["%Y-%m-%d"]), help="Data as of this date [today].")
@click.option("--api-key", default="fake-api-key", envvar="FAKE_HEALTHDOCK_API_KEY")
@click.option("--webhook-url", help="Where to POST webhooks; none: webhooks are not sent.")
@click.option("--webhook-secret", envvar="FAKE_HEALTHDOCK_WEBHOOK_SECRET", help="HMAC key.")
@click.option("--rate-limit", default=1000, type=click.IntRange(0), help="Per window; 0: none.")
@click.option("--window", default=60.0, type=click.FloatRange(0.001), help="Seconds.")
@click.option("--control-token", envvar="FAKE_HEALTHDOCK_CONTROL_TOKEN", help="Guards /_fake/.")
@click.option("--error-rate", default=0.0, type=_RATE, help="Fraction answered 5xx.")
@click.option("--latency", nargs=2, type=_SECONDS, help="MIN MAX seconds added per request.")
@click.option("--reset-rate", default=0.0, type=_RATE, help="Fraction of connections dropped.")
@click.option("--truncate-rate", default=0.0, type=_RATE, help="Fraction of bodies cut short.")
@click.option("--drift-rate", default=0.0, type=_RATE, help="Lists that insert/delete first.")
@click.option("--spike-rate", default=0.0, type=_RATE, help="Fraction held --spike-seconds more.")
@click.option("--spike-seconds", default=2.0, type=_SECONDS, help="Length of a latency spike.")
@click.option("--storm-rate", default=0.0, type=_RATE, help="Fraction that begin a 429 storm.")
@click.option(
    "--storm-seconds", default=1.0, type=click.FloatRange(0.0, min_open=True),
    help="Length of a 429 storm (every request refused, whatever its budget).",
)  # fmt: skip
@click.option("--drop-rate", default=0.0, type=_RATE, help="Webhooks never sent.")
@click.option("--duplicate-rate", default=0.0, type=_RATE, help="Webhooks sent twice.")
@click.option("--delay", nargs=2, type=_SECONDS, help="MIN MAX seconds before each webhook.")
@click.option("--reorder", default=0, type=click.IntRange(0), help="Shuffle webhooks in windows.")
@click.option("--mutations-per-second", default=0.0, type=_SECONDS, help="Random changes.")
@click.option("--oauth-client-id", help="Register an OAuth client (needs --oauth-redirect-uri).")
@click.option(
    "--oauth-client-secret", envvar="FAKE_HEALTHDOCK_OAUTH_CLIENT_SECRET",
    help="The OAuth client's secret; none: a public client (PKCE only).",
)  # fmt: skip
@click.option(
    "--oauth-redirect-uri", multiple=True,
    help="A redirect URI of the OAuth client, matched exactly (repeatable).",
)  # fmt: skip
@click.option(
    "--oauth-access-seconds", default=3600.0, type=click.FloatRange(0.0, min_open=True),
    help="Lifetime of OAuth access tokens.",
)  # fmt: skip
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning"]))
def main(
    host: str,
    port: int,
    patients: int,
    appointments_per_patient: float,
    seed: int,
    anchor: datetime | None,
    api_key: str,
    webhook_url: str | None,
    webhook_secret: str | None,
    rate_limit: int,
    window: float,
    control_token: str | None,
    error_rate: float,
    latency: tuple[float, float] | None,
    reset_rate: float,
    truncate_rate: float,
    drift_rate: float,
    spike_rate: float,
    spike_seconds: float,
    storm_rate: float,
    storm_seconds: float,
    drop_rate: float,
    duplicate_rate: float,
    delay: tuple[float, float] | None,
    reorder: int,
    mutations_per_second: float,
    oauth_client_id: str | None,
    oauth_client_secret: str | None,
    oauth_redirect_uri: tuple[str, ...],
    oauth_access_seconds: float,
    log_level: str,
) -> None:
    """Serve a fake HealthDock API (/v1/patients, /v1/appointments) with seeded data, signed
    webhooks for every change, and faults on demand (steerable at /_fake/). With
    --oauth-client-id, /v1 also takes OAuth access tokens from /oauth/authorize and
    /oauth/token (authorization code with PKCE, refresh tokens, revocation)."""
    if webhook_url and not webhook_secret:
        raise click.UsageError(
            "--webhook-url needs --webhook-secret: receivers reject unsigned events"
        )
    try:
        faults = Faults(
            error_rate=error_rate,
            latency=latency or None,
            reset_rate=reset_rate,
            truncate_rate=truncate_rate,
            drift_rate=drift_rate,
            spike_rate=spike_rate,
            spike_seconds=spike_seconds,
            storm_rate=storm_rate,
            storm_seconds=storm_seconds,
        )
        switches = WebhookSwitches(
            drop_rate=drop_rate, duplicate_rate=duplicate_rate, delay=delay or None, reorder=reorder
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    oauth_clients = _oauth_clients(oauth_client_id, oauth_client_secret, oauth_redirect_uri)
    fake = FakeHealthDock(
        seed=seed,
        patients=patients,
        appointments_per_patient=appointments_per_patient,
        api_key=api_key,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        rate_limit=rate_limit or None,
        window_seconds=window,
        anchor=_day(anchor),
        faults=faults,
        webhook_switches=switches,
        control_token=control_token,
        oauth_clients=oauth_clients,
        access_token_seconds=oauth_access_seconds,
    )
    counts = fake.counts()
    click.echo(
        f"fake HealthDock: {counts['patients']} patients, {counts['appointments']} appointments"
        f" (seed {seed}) on http://{host}:{port}/v1",
        err=True,
    )
    for client in oauth_clients:
        kind = "public" if client.secret is None else "confidential"
        click.echo(
            f"OAuth client {client.client_id} ({kind}) at http://{host}:{port}{AUTHORIZE_PATH}",
            err=True,
        )
    serve(
        fake,
        host=host,
        port=port,
        mutations_per_second=mutations_per_second,
        log_level=log_level,
    )


def _oauth_clients(
    client_id: str | None, secret: str | None, redirect_uris: tuple[str, ...]
) -> tuple[OAuthClient, ...]:
    if client_id is None:
        if secret or redirect_uris:
            raise click.UsageError(
                "--oauth-client-secret and --oauth-redirect-uri need --oauth-client-id"
            )
        return ()
    if not redirect_uris:
        raise click.UsageError(
            "--oauth-client-id needs at least one --oauth-redirect-uri: the authorization"
            " server only redirects to registered URIs"
        )
    try:
        return (OAuthClient(client_id, redirect_uris, secret or None),)
    except ValueError as error:
        raise click.UsageError(str(error)) from None


def _day(anchor: datetime | None) -> date | None:
    return None if anchor is None else anchor.date()


if __name__ == "__main__":
    main()
