"""A reconcile pass: make the mirror equal to HealthDock for one resource.

A pass over a whole resource **marks** (``sync.mark``: every page through the ordering guard,
each listed record marked) and then, when it listed every page, **sweeps** (``sync.sweep``:
confirms with HealthDock what it did not list, and tombstones what is surely gone). An
incomplete pass sweeps nothing. A **refresh** applies a filtered listing (say, one day's
appointments): quick to heal missed creates and updates, blind to deletions.

Every change a pass finds (a missed create, update or delete) is written to the event log
with source ``reconcile``, so the change feed is complete, and counted on the run. The first
complete pass over a resource is a backfill (``sync_runs.kind``): what it brings is the
initial copy, not webhook loss.

**Fencing.** Under the lease, every write of a pass (pages, confirmations, progress, its
finish) first checks the lease's fence in its own transaction (``sync.passes.PassWriter``): a
holder that lost the lease while frozen writes nothing more. **A bug** (an exception that is
not one of ours) ends the pass ``failed``, recorded with the exception's type only (its text
can carry data), and it is retried soon like an incomplete one.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Sequence

from sqlalchemy import Engine

from config import MirrorError
from mirror import Resource, RunKind, RunOutcome, leases, runs
from sync.client import HealthDockClient, UpstreamError
from sync.mark import mark
from sync.passes import PassOptions, PassResult, PassWriter, Progress, apply_listed
from sync.sweep import sweep

log = logging.getLogger(__name__)


async def reconcile(
    engine: Engine,
    client: HealthDockClient,
    resource: Resource,
    options: PassOptions,
    *,
    progress: Progress | None = None,
    fence: leases.Fence | None = None,
) -> PassResult:
    """One pass over ``resource``; the caller holds the reconcile lease, whose ``fence`` every
    write checks (None: the caller alone writes, as in a test).

    A pass that HealthDock cuts short ends ``incomplete`` (and sweeps nothing); one that a
    bug ends, ``failed``. One that is interrupted otherwise (cancelled, the database away,
    the process killed) stays ``running`` with its checkpoint, and the next pass over the
    resource resumes it. A lost lease raises ``LeaseLost`` and writes nothing more.
    """
    write = PassWriter(engine, fence)
    run = await write(functools.partial(runs.start_whole_pass, resource=resource.value))
    result = PassResult(run.id, resource.value)
    requests_before = client.stats.requests
    limited_before = client.stats.rate_limited
    errors_before = client.stats.errors
    try:
        await mark(write, client, resource, options, run, result, progress)
        await sweep(write, client, resource, options, run, result)
    except UpstreamError as error:
        result.outcome, result.error = RunOutcome.INCOMPLETE, str(error)
        log.warning("%s pass %d incomplete: %s", resource.value, run.id, error)
    except MirrorError:
        raise  # ours, not a bug: a lost lease, the database away (the pass resumes)
    except Exception as error:
        _failed(result, error)
    if result.outcome == RunOutcome.RUNNING:
        result.outcome = RunOutcome.SUCCESS
    counts = {
        "requests": client.stats.requests - requests_before,
        "rate_limited": client.stats.rate_limited - limited_before,
        "errors": client.stats.errors - errors_before,
    }
    await _finish(write, result, counts)
    return result


async def refresh(
    engine: Engine,
    client: HealthDockClient,
    resource: Resource,
    filters: Sequence[dict[str, str]],
    options: PassOptions,
    *,
    fence: leases.Fence | None = None,
) -> PassResult:
    """Apply what HealthDock lists under each filter (say, one day's appointments).

    A filtered listing heals missed creates and updates quickly; it cannot tell deletions
    (a record outside the filter is not gone), so it sweeps nothing.
    """
    start = functools.partial(runs.start_or_resume, resource=resource.value, kind=RunKind.UPCOMING,
                              resume=False)  # fmt: skip
    write = PassWriter(engine, fence)
    run = await write(start)
    result = PassResult(run.id, resource.value)
    try:
        for filter_set in filters:
            async for page in client.pages(resource, options.page_size, **filter_set):
                apply = functools.partial(apply_listed, resource=resource, run=run,
                                          records=page.records, mark=False, checkpoint=0,
                                          pages=1)  # fmt: skip
                result.add(await write(apply), len(page.records), pages=1)
        result.outcome = RunOutcome.SUCCESS
    except UpstreamError as error:
        result.outcome, result.error = RunOutcome.INCOMPLETE, str(error)
    except MirrorError:
        raise
    except Exception as error:
        _failed(result, error)
    await _finish(write, result, {})
    return result


def _failed(result: PassResult, error: Exception) -> None:
    """A bug ended the pass: record it ``failed`` with the error's type, and where it was
    raised, never its text (it can carry a record's data)."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    result.outcome, result.error = RunOutcome.FAILED, type(error).__name__
    log.error(
        "%s pass %d failed: %s%s (a bug; retried soon)",
        result.resource, result.run_id, result.error, where,
    )  # fmt: skip


async def _finish(write: PassWriter, result: PassResult, counts: dict[str, int]) -> None:
    finish = functools.partial(runs.finish, run_id=result.run_id, outcome=result.outcome,
                               counts=counts, error=result.error)  # fmt: skip
    await write(finish)
