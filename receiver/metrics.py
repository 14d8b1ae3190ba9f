"""``GET /metrics``: Prometheus metrics of the receiver and of the reconciles.

Three sources, one registry per app (never the global default, so several apps in one process
do not collide):

- **Webhooks**, counted in the receiver's own process as each request ends: the committer
  child does the writes, but every receipt comes back to this process.
- **Sync runs, the event log's backlog, the lease**, read from the database at scrape time:
  reconciles may run in another process (``worker``), and the database is what every process
  shares. A few small aggregate queries; when the database does not answer they are skipped
  and ``healthdock_database_up`` says 0, so the endpoint itself never looks broken.
- **The API's rate budget**, as the last HealthDock answer reported it, when the scheduler runs
  in this process (``serve``): reconciles started here report to this app while it runs.

Labels carry event types, outcomes and resources only: never record ids or patient data.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from litestar import MediaType, Request, Response, get
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from mirror import (
    EVENT_TYPES,
    LOSS_KINDS,
    UNSETTLED,
    DatabaseUnavailable,
    RunOutcome,
    leases,
    publications,
    read_transaction,
    runs,
    unsettled_counts,
)

log = logging.getLogger(__name__)

# Rejections of a request, by reason: the event was not stored.
BAD_REQUEST = "bad_request"
TOO_LARGE = "too_large"
UNAVAILABLE = "unavailable"

_OTHER_EVENT_TYPE = "other"  # unknown types are the sender's choice: keep the label set bounded
_SYNC_CHANGES = ("created", "updated", "tombstoned")
# Seconds from a webhook's arrival to its committed acknowledgement: group commit keeps this
# in milliseconds; the top buckets are a database in trouble.
_APPLY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The app's registry and the webhook metrics its handlers record."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._events = Counter(
            "healthdock_webhook_events",
            "Signed webhook events acknowledged, by event type and outcome "
            "(applied, ignored, failed, duplicate).",
            ["event_type", "outcome"],
            registry=self.registry,
        )
        self._signature_failures = Counter(
            "healthdock_webhook_signature_failures",
            "Webhooks refused with 401: signature missing, malformed or not matching any secret.",
            registry=self.registry,
        )
        self._rejected = Counter(
            "healthdock_webhook_rejected",
            "Signed or unsigned webhooks not stored, by reason: bad_request (400), "
            "too_large (413), unavailable (503, the database; the sender retries).",
            ["reason"],
            registry=self.registry,
        )
        for reason in (BAD_REQUEST, TOO_LARGE, UNAVAILABLE):
            self._rejected.labels(reason)
        self._apply_seconds = Histogram(
            "healthdock_webhook_apply_seconds",
            "Seconds from a webhook's arrival to its committed acknowledgement.",
            buckets=_APPLY_BUCKETS,
            registry=self.registry,
        )
        self._rate_budget = _RateBudget()
        self.registry.register(self._rate_budget)
        ProcessCollector(registry=self.registry)

    def acknowledged(self, event_type: str, outcome: str, seconds: float) -> None:
        """One event committed (or recognized as a duplicate) ``seconds`` after it arrived."""
        label = event_type if event_type in EVENT_TYPES else _OTHER_EVENT_TYPE
        self._events.labels(label, outcome).inc()
        self._apply_seconds.observe(seconds)

    def signature_failed(self) -> None:
        self._signature_failures.inc()

    def rejected(self, reason: str) -> None:
        self._rejected.labels(reason).inc()

    @contextlib.contextmanager
    def collecting(self, engine: Engine) -> Iterator[None]:
        """While open: scrapes read ``engine`` for the sync and event-log metrics."""
        collector = _DatabaseCollector(engine)
        self.registry.register(collector)
        try:
            yield
        finally:
            self.registry.unregister(collector)

    def observe_rate_budget(self, limit: int, remaining: int, reset_at: float) -> None:
        """What HealthDock last said of its rate limit, to a reconcile in this process (the
        command line hands this to the scheduler it runs inside ``serve``)."""
        self._rate_budget.observe(limit, remaining, reset_at)


@get(
    "/metrics",
    summary="Prometheus metrics (counts only, no patient data; unauthenticated)",
    tags=["operations"],
    sync_to_thread=True,
    # Prometheus' text exposition format (OpenMetrics when the scraper asks for it), not JSON.
    media_type=MediaType.TEXT,
)
def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    metrics: Metrics = request.app.state.metrics
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    # The exact type Prometheus negotiated; Litestar would append a second charset to it.
    return Response(
        encode(metrics.registry), media_type=MediaType.TEXT, headers={"content-type": content_type}
    )


class _RateBudget(Collector):
    """HealthDock's rate-limit window as its answers to this process's reconciles last told
    it; nothing until one has made a request."""

    def __init__(self) -> None:
        self._window: tuple[int, int, float] | None = None  # limit, remaining, reset at

    def observe(self, limit: int, remaining: int, reset_at: float) -> None:
        known = self._window
        # Concurrent answers arrive out of order: within one window the smallest remaining is
        # the freshest. One tuple, replaced whole: a scrape never sees half an update.
        if known is None or reset_at > known[2] or (reset_at == known[2] and remaining < known[1]):
            self._window = (limit, remaining, reset_at)

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        window = self._window
        if window is None:
            return
        limit, remaining, reset_at = window
        yield _gauge(
            "healthdock_sync_rate_budget_limit",
            "Requests HealthDock allows per rate-limit window (X-RateLimit-Limit), as last "
            "reported to a reconcile in this process.",
            limit,
        )
        yield _gauge(
            "healthdock_sync_rate_budget_remaining",
            "Requests left in that window (X-RateLimit-Remaining), as last reported.",
            remaining,
        )
        yield _gauge(
            "healthdock_sync_rate_budget_reset_timestamp_seconds",
            "When that window ends (X-RateLimit-Reset, Unix time): past it, the budget is full.",
            reset_at,
        )


class _DatabaseCollector(Collector):
    """What the database says, read at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def describe(self) -> Iterable[Metric]:
        return ()  # else registering would query the database

    def collect(self) -> Iterable[Metric]:
        try:
            totals, unapplied, holders, lags = read_transaction(self._engine, _read)
        except (DatabaseUnavailable, SQLAlchemyError) as error:
            # Only the type: the message is the driver's and could carry a statement.
            log.warning("metrics: the database did not answer (%s); its metrics skipped",
                        type(error).__name__)  # fmt: skip
            yield _gauge("healthdock_database_up", "1 if the database answered this scrape.", 0)
            return
        yield _gauge("healthdock_database_up", "1 if the database answered this scrape.", 1)
        yield from _sync_metrics(totals)
        backlog = GaugeMetricFamily(
            "healthdock_events_unapplied",
            "Events in the event log not applied to the mirror, by status "
            "(failed: see `healthdock-mirror replay`).",
            labels=["status"],
        )
        for status in UNSETTLED:
            backlog.add_metric([status], unapplied.get(status, 0))
        yield backlog
        held = GaugeMetricFamily(
            "healthdock_sync_leases_held", "Leases currently held (1: a reconcile is running)."
        )
        held.add_metric([], len(holders))
        yield held
        holder = InfoMetricFamily(
            "healthdock_sync_lease_holder",
            "Who holds each lease (host:pid); absent while nobody does.",
            labels=["lease"],
        )
        for lease, name in holders:
            holder.add_metric([lease], {"holder": name})
        yield holder
        behind = GaugeMetricFamily(
            "healthdock_publisher_lag_events",
            "Change-feed events a publisher (NATS JetStream) has not published yet.",
            labels=["publisher"],
        )
        waited = GaugeMetricFamily(
            "healthdock_publisher_lag_seconds",
            "How long the oldest event a publisher has not published yet has waited (0: none).",
            labels=["publisher"],
        )
        for lag in lags:
            behind.add_metric([lag.name], lag.events)
            waited.add_metric([lag.name], lag.seconds)
        yield behind
        yield waited


def _read(
    connection: Connection,
) -> tuple[
    list[runs.RunTotals],
    dict[str, int],
    list[tuple[str, str]],
    list[publications.PublicationLag],
]:
    return (
        runs.run_totals(connection),
        unsettled_counts(connection),
        leases.lease_holders(connection),
        publications.lag(connection),
    )


def _sync_metrics(totals: list[runs.RunTotals]) -> Iterator[Metric]:
    labels = ["resource", "kind"]
    finished = CounterMetricFamily(
        "healthdock_sync_runs",
        "Finished reconcile passes, by resource, kind (backfill, full, upcoming) and outcome "
        "(success, incomplete, held, failed).",
        labels=[*labels, "outcome"],
    )
    running = GaugeMetricFamily(
        "healthdock_sync_runs_running",
        "Passes marked running: in progress, or cut short and waiting to be resumed.",
        labels=labels,
    )
    pages = CounterMetricFamily(
        "healthdock_sync_pages", "Pages of records applied by reconcile passes.", labels=labels
    )
    records = CounterMetricFamily(
        "healthdock_sync_records", "Records read by reconcile passes.", labels=labels
    )
    requests = CounterMetricFamily(
        "healthdock_sync_requests",
        "Requests to HealthDock's API by finished passes.",
        labels=labels,
    )
    limited = CounterMetricFamily(
        "healthdock_sync_rate_limited",
        "429 answers HealthDock gave finished passes (normally 0: the pacer avoids them).",
        labels=labels,
    )
    healed = CounterMetricFamily(
        "healthdock_sync_healed",
        "Changes a reconcile found that webhooks had not brought (created, updated, "
        "tombstoned): the measure of webhook loss. A backfill's initial copy is not counted.",
        labels=["resource", "change"],
    )
    last_success = GaugeMetricFamily(
        "healthdock_sync_last_success_timestamp_seconds",
        "When the last successful pass of each resource and kind finished (Unix time).",
        labels=labels,
    )
    summed: dict[tuple[str, str], list[int]] = {}
    healed_by: dict[tuple[str, str], int] = {}
    for row in totals:
        key = (row.resource, row.kind)
        if row.outcome == RunOutcome.RUNNING:
            running.add_metric(list(key), row.runs)
        else:
            finished.add_metric([*key, row.outcome], row.runs)
        if row.outcome == RunOutcome.SUCCESS and row.last_finished is not None:
            last_success.add_metric(list(key), row.last_finished.timestamp())
        sums = summed.setdefault(key, [0, 0, 0, 0])
        for index, value in enumerate((row.pages, row.records, row.requests, row.rate_limited)):
            sums[index] += int(value)
        if row.kind not in LOSS_KINDS:
            continue
        for change, value in zip(_SYNC_CHANGES, (row.created, row.updated, row.tombstoned),
                                 strict=True):  # fmt: skip
            healed_by[(row.resource, change)] = healed_by.get((row.resource, change), 0) + value
    for key, (page_count, record_count, request_count, limited_count) in summed.items():
        pages.add_metric(list(key), page_count)
        records.add_metric(list(key), record_count)
        requests.add_metric(list(key), request_count)
        limited.add_metric(list(key), limited_count)
    for (resource, change), count in healed_by.items():
        healed.add_metric([resource, change], count)
    yield from (finished, running, pages, records, requests, limited, healed, last_success)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
