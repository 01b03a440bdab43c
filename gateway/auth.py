"""Gateway API keys: who the caller is, by the Bearer key they send."""

from __future__ import annotations

import hmac
import logging

from starlette.datastructures import Headers

from gateway.config import AuthConfig
from gateway.errors import AuthenticationFailed

log = logging.getLogger("gateway")


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self._keys = [(k.key.encode(), k.name) for k in config.api_keys]
        if not self._keys:
            log.warning("auth.api_keys is empty: the gateway accepts requests from anyone who can reach it")

    @property
    def open(self) -> bool:
        return not self._keys

    def key_name(self, headers: Headers) -> str | None:
        """The name of the caller's key; None when auth is off. Raises AuthenticationFailed."""
        if not self._keys:
            return None
        value = headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed(
                "Missing API key. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        presented = token.strip().encode()
        found = None
        for key, name in self._keys:
            # Compare against every key so timing does not tell which prefix matched.
            if hmac.compare_digest(presented, key):
                found = name
        if found is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return found
