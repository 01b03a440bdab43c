"""Gateway API keys: who the caller is, by the key they send, and the policy that comes with it.

The key is read from ``Authorization: Bearer <key>`` (OpenAI clients), ``api-key``
(Azure clients) or ``x-api-key``. Keys are compared by their SHA-256 digests, so
a config may hold ``key_sha256`` instead of the secret, and every key is compared
on every request: the timing does not tell which prefix matched.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from starlette.datastructures import Headers

from gateway.config import AuthConfig
from gateway.errors import AuthenticationFailed
from gateway.policy import OPEN_POLICY, KeyPolicy

log = logging.getLogger("gateway")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self._keys: list[tuple[bytes, KeyPolicy]] = [
            (bytes.fromhex(k.key_sha256) if k.key_sha256 else _digest(k.key or ""), KeyPolicy.from_config(k))
            for k in config.api_keys
        ]
        self.policies = {policy.name: policy for _, policy in self._keys}
        if not self._keys:
            log.warning("auth.api_keys is empty: the gateway accepts requests from anyone who can reach it")

    @property
    def open(self) -> bool:
        return not self._keys

    def caller(self, headers: Headers) -> KeyPolicy:
        """The caller's policy (the open policy when auth is off). Raises AuthenticationFailed."""
        if not self._keys:
            return OPEN_POLICY
        token = _presented(headers)
        if not token:
            raise AuthenticationFailed(
                "Missing API key. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        presented = _digest(token)
        found = None
        for digest, policy in self._keys:
            if hmac.compare_digest(presented, digest):
                found = policy
        if found is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return found


def _presented(headers: Headers) -> str:
    value = headers.get("authorization")
    if value is not None:
        scheme, _, token = value.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""
    return (headers.get("api-key") or headers.get("x-api-key") or "").strip()
