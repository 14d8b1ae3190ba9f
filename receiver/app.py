"""The receiver's Litestar application factory."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components
from sqlalchemy import Engine

from config import Settings
from mirror import create_mirror_engine, head_revision, require_current
from receiver.access import TOKEN_SCHEME, TOKEN_SECURITY_SCHEME, configured_admin_token
from receiver.console import (
    LoginThrottle,
    add_security_headers,
    console_router,
    template_config,
)
from receiver.errors import EXCEPTION_HANDLERS
from receiver.feed import read_events
from receiver.fhir import fhir_router
from receiver.health import healthz, readyz
from receiver.intake import Intake
from receiver.metrics import Metrics, metrics_endpoint
from receiver.oauth_callback import oauth_callback
from receiver.webhooks import receive_webhook

log = logging.getLogger(__name__)


# Something that runs alongside the receiver (the scheduler, say), given the app's engine.
Service = Callable[[Engine], AbstractAsyncContextManager[None]]


def create_app(
    settings: Settings, *, services: Sequence[Service] = (), metrics: Metrics | None = None
) -> Litestar:
    """The receiver for ``settings``. Its lifespan starts (and stops, in reverse) an engine for
    readiness checks, the intake with its committer process, which owns the writes, and
    ``services``."""

    # Per app: several apps in one process (tests) never share counts.
    metrics = metrics or Metrics()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if settings.admin_token is not None and configured_admin_token(settings) is None:
            # Set, so meant to enable them; blank, so they stay closed (403): say so once.
            log.warning(
                "HEALTHDOCK_ADMIN_TOKEN is blank: only named tokens (healthdock-mirror token "
                "create) are let in"
            )
        engine = create_mirror_engine(
            settings.database_url,
            timeout_seconds=settings.database_timeout_seconds,
            local_timezone=settings.local_timezone,
        )
        try:
            require_current(engine)
            intake = Intake(
                settings.database_url,
                timeout_seconds=settings.database_timeout_seconds,
                local_timezone=settings.local_timezone,
                max_batch=settings.intake_max_batch,
                logging_options=settings.log_options,
            )
            await intake.start()
            app.state.engine = engine
            app.state.intake = intake
            try:
                async with contextlib.AsyncExitStack() as stack:
                    stack.enter_context(metrics.collecting(engine))
                    for service in services:
                        await stack.enter_async_context(service(engine))
                    yield
            finally:
                await intake.stop()
        finally:
            engine.dispose()

    app = Litestar(
        route_handlers=[
            receive_webhook,
            healthz,
            readyz,
            metrics_endpoint,
            read_events,
            fhir_router(),
            oauth_callback,
            console_router(),
        ],
        template_config=template_config(),
        before_send=[add_security_headers],
        lifespan=[lifespan],
        exception_handlers=dict(EXCEPTION_HANDLERS),
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="healthdock-mirror",
            version="0.1.0",
            path="/schema",
            # The documents only: Litestar's HTML pages (Swagger, ReDoc...) load their scripts
            # from a CDN, which a hospital network may not reach and should not have to trust.
            # /schema itself answers the JSON document.
            render_plugins=[JsonRenderPlugin(), YamlRenderPlugin()],
            components=Components(security_schemes={TOKEN_SCHEME: TOKEN_SECURITY_SCHEME}),
        ),
        debug=False,
        # Logging is the entry point's to configure (and never logs request bodies).
        logging_config=None,
    )
    app.state.settings = settings
    app.state.schema_head = head_revision()
    app.state.metrics = metrics
    app.state.login_throttle = LoginThrottle()
    return app
