"""SessionNamespace: the worker session ids a gateway gives its clients' sessions.

Pure (no I/O). A client may name its session (``?session_id=``), but that name is never the
worker's id: a gateway's worker sessions are ``gw-<instance>-<scope>-<client id>``, where

- ``instance`` is drawn at random for each gateway (each replica, each restart), so no other
  gateway and no publisher that speaks NATS directly can land on the same worker session by
  choosing the same name;
- ``scope`` is a keyed hash of the credential the client presented (its token, or none), so
  a name is only ever shared by clients that hold the same credential.

Clients see their own name in every frame (the bridge renames results on the way out); the
worker, NATS and the logs see the worker id.
"""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "gw-"
INSTANCE_HEX = 8
SCOPE_HEX = 8
# "gw-" + instance + "-" + scope + "-": what the namespace adds to a client's name.
ADDED_CHARS = len(PREFIX) + INSTANCE_HEX + 1 + SCOPE_HEX + 1


class SessionNamespace:
    def __init__(self, instance: str | None = None, key: bytes | None = None) -> None:
        self.instance = instance or secrets.token_hex(INSTANCE_HEX // 2)
        # Per gateway: a scope says nothing about the credential outside this process.
        self._key = key or secrets.token_bytes(32)

    def scope(self, credential: str | None) -> str:
        """The scope of the clients that presented `credential` (None: no credential)."""
        digest = hashlib.blake2b(
            (credential or "").encode(), key=self._key, digest_size=SCOPE_HEX // 2
        )
        return digest.hexdigest()

    def worker_id(self, scope: str, client_id: str) -> str:
        """The worker session id of `client_id` in `scope`."""
        return f"{PREFIX}{self.instance}-{scope}-{client_id}"
