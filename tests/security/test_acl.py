"""Redis ACL end to end: a user limited to ``~sc:*`` and shardcache's commands runs up, prefetch,
load and rm through the CLI and the library; a wrong password or a missing permission is a
clear error that names what is missing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result
from faults.harness import assert_exactly_once, epoch_ids, unique_name

from shardcache.cache import RetryPolicy, connect
from shardcache.cli import cli
from shardcache.dataloader import CachedDataLoader
from shardcache.errors import AccessDenied
from shardcache.localcluster import LocalCluster
from shardcache.prefetcher import prefetch

from .acl import MINIMAL_ACL
from .conftest import SecureCluster, create_acl_user, secret

pytestmark = pytest.mark.slow

ROWS = range(600)
QUICK = RetryPolicy(deadline=2.0)


def run(*args: str, env: dict[str, str]) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def one_line_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_minimal_acl_user_runs_up_prefetch_load_rm_through_cli_and_library(
    tmp_path: Path, free_ports: Callable[..., int], source: Path, clean_env: pytest.MonkeyPatch,
) -> None:
    admin = secret("admin")
    state = tmp_path / "cluster"
    for _ in range(3):  # another test session may grab the ports between the check and the start
        port = free_ports(3, 21000, 22767)
        up = run("up", "--masters", "3", "--replicas", "0", "--port", str(port), "--dir", str(state),
                 "--password-env", "SC_TEST_ADMIN_PASSWORD", env={"SC_TEST_ADMIN_PASSWORD": admin})
        if "in use" not in up.output:
            break
    assert up.exit_code == 0, up.output
    assert admin not in up.output
    try:
        secure = create_acl_user(LocalCluster.from_state(state), admin_password=admin)
        env = {"SHARDCACHE_REDIS_PASSWORD": secure.password}

        # CLI: prefetch, ls, info as the ACL user.
        name = unique_name("acl-cli")
        done = run("prefetch", str(source), "--dataset", name, "--redis", secure.url, "--shard-size", "8KiB",
                   "--json", env=env)
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout)["state"] == "complete"
        assert name in run("ls", "--redis", secure.url, env=env).stdout
        assert json.loads(run("info", name, "--redis", secure.url, "--json", env=env).stdout)["missing_shards"] == []
        top = run("top", "--once", "--redis", secure.url, env=env)
        assert name in top.stdout, top.output
        # A prefetch in parallel parts (planned, loaded by two processes, committed) as the ACL user.
        parts = run("prefetch", str(source), "--dataset", unique_name("acl-parts"), "--redis", secure.url,
                    "--shard-size", "8KiB", "--processes", "2", "--json", env=env)
        assert parts.exit_code == 0, parts.output
        assert json.loads(parts.stdout)["state"] == "complete"

        # Library: prefetch another dataset, load both (workers get the credentials by pickling),
        # read one shard through and write it back.
        clean_env.setenv("SHARDCACHE_REDIS_PASSWORD", secure.password)
        with connect(secure.url, retry=QUICK) as cache:
            other = prefetch(source, dataset=unique_name("acl-lib"), cache=cache, shard_size="8KiB")
            for dataset, workers in ((name, 2), (other.name, 0)):
                loader = CachedDataLoader(dataset, cache=cache, batch_size=64, num_workers=workers)
                assert_exactly_once(epoch_ids(loader), ROWS)
            with redis.RedisCluster(host="127.0.0.1", port=port, password=admin) as root:
                root.delete(other.shards[0].key)  # a lost shard: the ACL user rebuilds and writes it back
            loader = CachedDataLoader(other.name, cache=cache, batch_size=64)
            assert_exactly_once(epoch_ids(loader), ROWS)
            assert loader.stats().written_back == 1
            assert cache.delete(other.name) == [other.version]  # library rm

        # CLI rm; then nothing was denied anywhere, not even silently.
        assert run("rm", name, "--redis", secure.url, env=env).exit_code == 0
        assert secure.denied() == []

        # The rule confines the user to shardcache's keys.
        with redis.Redis(port=port, username=secure.user, password=secure.password) as plain, \
                pytest.raises(redis.exceptions.NoPermissionError):
            plain.get("someone-else:secret")
    finally:
        down = run("down", "--dir", str(state), env={})
        assert down.exit_code == 0, down.output


def test_wrong_or_missing_password_is_access_denied(
    secure_cluster: SecureCluster, clean_env: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(AccessDenied, match="refused the credentials") as caught:
        connect(secure_cluster.url, password="not-" + secure_cluster.password, retry=QUICK)
    message = str(caught.value)
    assert "check the username and password" in message
    assert "SHARDCACHE_REDIS_PASSWORD" in message
    assert caught.value.node is not None

    with pytest.raises(AccessDenied, match=r"refused the credentials|NOAUTH|Authentication required"):
        connect(secure_cluster.url, retry=QUICK)  # no password at all

    result = run("ls", "--redis", secure_cluster.url, env={"SHARDCACHE_REDIS_PASSWORD": "wrong"})
    line = one_line_error(result)
    assert "refused the credentials" in line
    assert "SHARDCACHE_REDIS_PASSWORD" in line


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        ("+info", "'info' command"),  # prefetch's capacity check
        ("+eval", "'eval' command"),  # locks, commits, leases
        ("+zremrangebyscore", "script"),  # only ever called from a Lua script
        ("~sc:*", "key"),  # the keys themselves
    ],
)
def test_a_missing_acl_permission_names_what_is_missing(
    drop: str, named: str, secure_cluster: SecureCluster, source: Path, clean_env: pytest.MonkeyPatch,
) -> None:
    rule = [r for r in MINIMAL_ACL if r != drop]
    if drop == "~sc:*":
        rule.append("~other:*")
    secure_cluster.set_rule(rule)
    def prefetch_then_load() -> None:
        with connect(secure_cluster.url, password=secure_cluster.password, retry=QUICK) as cache:
            manifest = prefetch(source, dataset=unique_name("acl-missing"), cache=cache, shard_size="8KiB")
            list(CachedDataLoader(manifest.name, cache=cache, batch_size=64))

    with pytest.raises(AccessDenied) as caught:
        prefetch_then_load()
    message = str(caught.value)
    assert "ACL user lacks a permission" in message, message
    assert named in message, message
    assert "Access control" in message  # points at README's rule


def test_the_minimal_rule_is_what_the_readme_documents() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "Access control" in readme, "README needs its 'Access control' section"
    documented = " ".join(readme.replace("\\\n", " ").split())  # the rule spans lines ending in a backslash
    assert " ".join(MINIMAL_ACL) in documented, "README's ACL rule differs from MINIMAL_ACL"
