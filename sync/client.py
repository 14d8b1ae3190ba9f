"""The HealthDock API as the reconciler uses it: paged reads, paced and retried.

One transport (``sync.network``) per client object, closed with it. Every request first
takes a slot from the pacer; 429s pause the pacer for everyone; server errors, timeouts,
dropped connections and truncated bodies are retried with capped, jittered backoff
(tenacity). Log lines name the resource and page, never the API key or a ``search`` value
(which can hold a patient's name).

Who the client is comes from its credentials (``sync.credentials``): an API key, or an OAuth
grant. A 401 is shown to them once: an OAuth grant refreshes its token and the request goes
again, neither counted as an error nor taken from the attempts; a second 401 ends the pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import httpx
import msgspec
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from config import MirrorError
from mirror import Resource
from sync.credentials import ApiKey, Credentials
from sync.network import http_transport
from sync.pacer import Pacer, RateLimit, read_rate_limit, retry_after

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 100
# What httpx's client would send besides the credentials.
_HEADERS = {
    "Accept": "application/json",
    "Accept-Encoding": "gzip, deflate",
    "Connection": "keep-alive",
    "User-Agent": f"python-httpx/{httpx.__version__}",
}

# Told (limit, remaining, reset at) whenever HealthDock reports its rate limit. A context
# variable, not a parameter: clients are made deep inside the scheduler's jobs, whose tasks
# inherit the context the scheduler started in (see sync.schedule.running_scheduler).
RateBudgetListener = Callable[[int, int, float], None]
rate_budget_listener: ContextVar[RateBudgetListener | None] = ContextVar(
    "rate_budget_listener", default=None
)


class UpstreamError(MirrorError):
    """HealthDock could not be read (after retries, or with an error retrying cannot fix)."""


class _Retryable(Exception):
    """A failure worth another attempt: 5xx, transport error, truncated or malformed body."""


class _RateLimited(_Retryable):
    def __init__(self, wait: float) -> None:
        super().__init__(f"rate limited for {wait:.1f} s")
        self.wait = wait


@dataclass(frozen=True, slots=True)
class Lookup:
    """A search for one record: ``record`` when found; without it, ``complete`` says whether
    every result was read (HealthDock does not have it) or not (nothing is known)."""

    record: dict[str, Any] | None
    complete: bool


@dataclass(frozen=True, slots=True)
class Page:
    records: list[dict[str, Any]]
    current_page: int
    total_pages: int
    total_count: int


@dataclass(slots=True)
class ClientStats:
    """What the client did, for ``sync_runs`` and metrics."""

    requests: int = 0
    rate_limited: int = 0
    errors: int = 0  # failures worth a retry (5xx, transport, bad body); 429s are counted apart
    remaining: int | None = None  # the budget left in the window, as last reported
    by_status: dict[int, int] = field(default_factory=dict)
    reauthorized: int = 0  # 401s answered by a refreshed OAuth token (not errors)


class HealthDockClient:
    """Reads pages of patients and appointments from HealthDock's API."""

    def __init__(
        self,
        base_url: str,
        credentials: str | Credentials,
        *,
        reserve: float = 0.2,
        timeout_seconds: float = 30.0,
        attempts: int = 6,
        max_backoff_seconds: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._credentials = ApiKey(credentials) if isinstance(credentials, str) else credentials
        # Requests go to the transport itself: of httpx's client, the pass needs no redirects,
        # cookies, auth flows or event hooks, and building each request through it cost a
        # third of a page's HTTP CPU. Each resource's URL is parsed once.
        base = httpx.URL(base_url.rstrip("/") + "/")
        self._urls = {resource: base.join(f"{resource.value}s") for resource in Resource}
        self._timeout = httpx.Timeout(timeout_seconds).as_dict()
        self._transport = transport if transport is not None else http_transport()
        self._pacer = Pacer(reserve)
        self._slot_lock = asyncio.Lock()
        # Set at each answer: what requests waiting for a window's first answer wait on.
        self._answered = asyncio.Event()
        self._answered.set()
        self._attempts = attempts
        self._backoff = wait_exponential_jitter(multiplier=0.2, max=max_backoff_seconds)
        self._clock = clock
        self._sleep = sleep
        self.stats = ClientStats()
        self._report_budget = rate_budget_listener.get()

    async def __aenter__(self) -> HealthDockClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        try:
            await self._transport.aclose()
        finally:
            await self._credentials.aclose()

    async def page(
        self, resource: Resource, page: int, limit: int = MAX_PAGE_SIZE, **filters: str
    ) -> Page:
        """One page of ``resource`` (``limit`` at most 100), with optional filters."""
        params = {"page": str(page), "limit": str(min(limit, MAX_PAGE_SIZE)), **filters}
        return await self._get(resource, params, f"{resource.value}s page {page}")

    async def pages(
        self, resource: Resource, limit: int = MAX_PAGE_SIZE, **filters: str
    ) -> AsyncGenerator[Page, None]:
        """Every page of ``resource`` under ``filters``, one after the other, up to the last
        one HealthDock counts (the total is read again at each page: it can change)."""
        number, total = 1, 1
        while number <= total:
            found = await self.page(resource, number, limit, **filters)
            yield found
            total = found.total_pages
            number += 1

    async def find_patient(self, record_id: str, max_pages: int = 20) -> Lookup:
        """Look for the patient with exactly this id through ``search`` (documented as "by
        name or ID" on ``GET /patients`` only).

        A search by a short id can match many patients, so the results are paged, up to
        ``max_pages``; a search that still has pages left then confirms nothing either way.
        """
        read = 0
        async with contextlib.aclosing(self.pages(Resource.PATIENT, search=record_id)) as found:
            async for page in found:
                for record in page.records:
                    if _record_id(record, Resource.PATIENT) == record_id:
                        return Lookup(record, complete=True)
                read += 1
                if read >= max_pages and page.total_pages > read:
                    return Lookup(None, complete=False)
        return Lookup(None, complete=True)

    async def appointments_on(self, day: date) -> dict[str, dict[str, Any]]:
        """Every appointment HealthDock lists under ``date=day`` (all pages), by id."""
        records: dict[str, dict[str, Any]] = {}
        async for page in self.pages(Resource.APPOINTMENT, date=day.isoformat()):
            for record in page.records:
                records[_record_id(record, Resource.APPOINTMENT)] = record
        return records

    async def _get(self, resource: Resource, params: Mapping[str, str], what: str) -> Page:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_Retryable),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(resource, params, what)
        except _Retryable as error:
            raise UpstreamError(
                f"{what}: {error} (gave up after {self._attempts} attempts)"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _RateLimited):
            return error.wait
        return float(self._backoff(state))

    async def _attempt(self, resource: Resource, params: Mapping[str, str], what: str) -> Page:
        response = await self._send(resource, params, what)
        if response.status_code == 401:
            authorization = response.request.headers["authorization"]
            if await self._credentials.rejected(authorization):
                self.stats.reauthorized += 1
                log.info("%s: HealthDock answered 401; again with a refreshed token", what)
                response = await self._send(resource, params, what)
        return self._read(response, resource, what)

    async def _send(
        self, resource: Resource, params: Mapping[str, str], what: str
    ) -> httpx.Response:
        # Before taking a slot: a refresh may take a while, and must not hold the window's
        # probing slot meanwhile.
        authorization = await self._credentials.authorization()
        delay = await self._slot()
        try:
            if delay > 0:
                await self._sleep(delay)
        except BaseException:
            self._settle(None, answered=False)  # cancelled before it went: nobody waits for it
            raise
        self.stats.requests += 1
        try:
            response = await self._request(resource, params, authorization)
        except BaseException as error:
            self._settle(None, answered=False)  # cancelled or failed: nobody waits for it
            if not isinstance(error, httpx.TransportError):
                raise
            self.stats.errors += 1
            log.warning("%s: %s", what, type(error).__name__)
            raise _Retryable(type(error).__name__) from None
        status = response.status_code
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
        window = read_rate_limit(response.headers)
        self._settle(window)
        if window is not None:
            self.stats.remaining = window.remaining
            if self._report_budget is not None:
                self._report_budget(window.limit, window.remaining, window.reset_at)
        return response

    async def _request(
        self, resource: Resource, params: Mapping[str, str], authorization: str
    ) -> httpx.Response:
        request = httpx.Request(
            "GET",
            self._urls[resource],
            params=params,
            headers={**_HEADERS, "Authorization": authorization},
            extensions={"timeout": self._timeout},
        )
        response = await self._transport.handle_async_request(request)
        response.request = request  # as httpx's client does: not every transport sets it
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    def _read(self, response: httpx.Response, resource: Resource, what: str) -> Page:
        status = response.status_code
        if status == 429:
            self.stats.rate_limited += 1
            wait = retry_after(response.headers, self._clock()) or 1.0
            self._pacer.pause_until(self._clock() + wait)
            log.warning("%s: rate limited, waiting %.1f s", what, wait)
            raise _RateLimited(wait)
        if status >= 500:
            self.stats.errors += 1
            log.warning("%s: HealthDock answered %d", what, status)
            raise _Retryable(f"HealthDock answered {status}")
        if status == 401:
            raise UpstreamError(
                f"{what}: HealthDock answered 401: {_error_code(response)} "
                f"({self._credentials.refusal_hint})"
            )
        if status != 200:
            raise UpstreamError(f"{what}: HealthDock answered {status}: {_error_code(response)}")
        try:
            # msgspec decodes a page in half the time of the json module httpx would use.
            document = msgspec.json.decode(response.content)
        except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError
            self.stats.errors += 1
            log.warning("%s: unreadable body (truncated?)", what)
            raise _Retryable("unreadable body") from None
        try:
            return _page(document, f"{resource.value}s")
        except _Retryable:
            self.stats.errors += 1
            raise

    async def _slot(self) -> float:
        """Seconds to wait before sending, once the pacer grants a slot: in a window whose
        budget is unknown, only after the answer to its one probing request."""
        while True:
            async with self._slot_lock:
                delay = self._pacer.reserve_slot(self._clock())
                if delay is not None:
                    return delay
                if self._answered.is_set():
                    self._answered = asyncio.Event()
                answered = self._answered
            await answered.wait()

    def _settle(self, window: RateLimit | None, *, answered: bool = True) -> None:
        self._pacer.settle(window, answered=answered)
        self._answered.set()


def _page(document: Any, key: str) -> Page:
    try:
        data = document["data"]
        pagination = data["pagination"]
        records = data[key]
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise TypeError
        return Page(
            records,
            int(pagination["current_page"]),
            int(pagination["total_pages"]),
            int(pagination["total_count"]),
        )
    except (KeyError, TypeError, ValueError):
        # A body cut short can still be valid JSON only by accident; treat it as a glitch.
        raise _Retryable(f"unexpected response shape for {key}") from None


def _record_id(record: dict[str, Any], resource: Resource) -> str:
    return str(record.get("id", record.get(resource.id_field)))


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "no error code"
