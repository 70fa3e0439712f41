"""Fixtures of the end-to-end security suite: a password-protected cluster with an ACL user
limited to shardcache's keys and commands, and passwords that a leak check can find anywhere.

The minimal rule is README's "Access control" section, kept in ``acl.py`` as ``MINIMAL_ACL``; the
tests prove that it is enough for up, prefetch, load and rm, and that nothing is denied
along the way (the ACL log stays empty).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from faults.harness import write_source

from shardcache.localcluster import LocalCluster

from .acl import MINIMAL_ACL, set_acl_user

USER = "shardcache-app"


def secret(label: str) -> str:
    """A password with a unique core (what the leak checks search for) and characters that
    must be percent-encoded in a URL."""
    return f"{label}-{uuid.uuid4().hex}/@:?"


@dataclass(frozen=True)
class SecureCluster:
    cluster: LocalCluster
    admin_password: str
    user: str
    password: str

    @property
    def seeds(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.cluster.ports[: self.cluster.masters])

    @property
    def url(self) -> str:
        """The ACL user's URL without the password (it comes from SHARDCACHE_REDIS_PASSWORD)."""
        return f"redis://{self.user}@{self.seeds}"

    @property
    def url_with_password(self) -> str:
        return f"redis://{self.user}:{quote(self.password, safe='')}@{self.seeds}"

    def admin(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=self.admin_password)

    def set_rule(self, rule: Sequence[str], *, user: str | None = None, password: str | None = None) -> None:
        """(Re)create an ACL user on every node: Redis Cluster does not propagate ACLs."""
        for port in self.cluster.ports:
            with self.admin(port) as node:
                set_acl_user(node, user or self.user, password or self.password, rule)
                node.execute_command("ACL", "LOG", "RESET")

    def denied(self) -> list[str]:
        """Every ACL denial logged on any node since the rule was set."""
        out = []
        for port in self.cluster.ports:
            with self.admin(port) as node:
                out += [f"{port}: {e.get('reason')} {e.get('object')} ({e.get('context')})" for e in node.acl_log()]
        return out


def create_acl_user(cluster: LocalCluster, *, admin_password: str) -> SecureCluster:
    secure = SecureCluster(cluster=cluster, admin_password=admin_password, user=USER, password=secret("user"))
    secure.set_rule(MINIMAL_ACL)
    return secure


@pytest.fixture
def secure_cluster(cluster_factory: Callable[..., LocalCluster]) -> SecureCluster:
    """3 primaries, a default user with an admin password, and the minimal ACL user."""
    admin = secret("admin")
    cluster = cluster_factory(masters=3, replicas=0, password=admin, node_timeout_ms=500)
    return create_acl_user(cluster, admin_password=admin)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_source(tmp_path / "source", rows=600, files=2)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No SHARDCACHE_* settings leak in from the environment the tests run in."""
    for name in ("SHARDCACHE_REDIS_URL", "SHARDCACHE_REDIS_PASSWORD", "SHARDCACHE_REDIS_USERNAME",
                 "SHARDCACHE_TLS_CA"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch
