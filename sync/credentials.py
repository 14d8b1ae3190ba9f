"""What the API client presents to HealthDock: the hospital's API key, or an OAuth grant.

The client asks ``authorization()`` before each request and tells ``rejected()`` of a 401. An
API key never changes, so a 401 is final; an OAuth grant (``sync.grant``) refreshes.
"""

from __future__ import annotations

from typing import Protocol


class Credentials(Protocol):
    async def authorization(self) -> str:
        """The ``Authorization`` header for the next request."""
        ...

    async def rejected(self, authorization: str) -> bool:
        """HealthDock answered 401 to ``authorization``: True if another try is worth it."""
        ...

    async def aclose(self) -> None: ...

    @property
    def refusal_hint(self) -> str:
        """What an operator should do when HealthDock refuses these credentials."""
        ...


class ApiKey:
    refusal_hint = "check HEALTHDOCK_API_KEY"

    def __init__(self, api_key: str) -> None:
        self._header = f"Bearer {api_key}"

    async def authorization(self) -> str:
        return self._header

    async def rejected(self, authorization: str) -> bool:
        return False

    async def aclose(self) -> None:
        return None
