"""The reconciler: passes that make the mirror equal to HealthDock, under one lease.

What is named here is its public surface (pinned by tests/sync/test_exported_members.py): what
the command line uses. The modules behind it are its own to rearrange.
"""

from mirror import leases
from sync import oauth
from sync.client import HealthDockClient, UpstreamError
from sync.job import api_client, pass_options, run_reconcile, run_refresh
from sync.passes import PassOptions, PassResult
from sync.reconcile import reconcile, refresh
from sync.schedule import running_scheduler

LeaseHeld = leases.LeaseHeld
LeaseLost = leases.LeaseLost

__all__ = [
    "HealthDockClient",
    "LeaseHeld",
    "LeaseLost",
    "PassOptions",
    "PassResult",
    "UpstreamError",
    "api_client",
    "oauth",
    "pass_options",
    "reconcile",
    "refresh",
    "run_reconcile",
    "run_refresh",
    "running_scheduler",
]
