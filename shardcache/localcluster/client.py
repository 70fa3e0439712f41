"""A short-lived client to one node, for starting, checking and injecting faults."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .config import TLSFiles

__all__ = ["NodeClients"]


@dataclass(frozen=True)
class NodeClients:
    """Opens clients to the nodes on ``host``, with the password and TLS files of the cluster."""

    host: str
    password: str | None = field(repr=False)
    tls: TLSFiles | None

    @contextmanager
    def open(self, port: int) -> Iterator[redis.Redis]:
        kwargs: dict[str, Any] = {}
        if self.tls is not None:
            kwargs = {
                "ssl": True,
                "ssl_ca_certs": self.tls.ca_file,
                "ssl_certfile": self.tls.cert_file,
                "ssl_keyfile": self.tls.key_file,
            }
        client = redis.Redis(
            host=self.host,
            port=port,
            password=self.password,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 0),  # callers poll with their own deadline
            decode_responses=True,
            **kwargs,
        )
        try:
            yield client
        finally:
            client.close()
