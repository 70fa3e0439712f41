"""A fake Kubernetes API server (kmock's KubernetesEmulator) served over real HTTP(S).

Shared by tests/kube and tests/kubeflow (``from kube.fake_api import ApiServer``).

kmock is asyncio-based while the official kubernetes client is synchronous, so the
emulator runs on its own event loop in a background thread: the client under test
talks to it over TCP exactly as it would to an API server.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

kmock = pytest.importorskip("kmock", reason="kmock (Python >= 3.11) provides the fake API server")
kubernetes = pytest.importorskip("kubernetes")

SERVICES = "v1/services"
SECRETS = "v1/secrets"
ENDPOINT_SLICES = "discovery.k8s.io/v1/endpointslices"


class ApiServer:
    """An emulated API server; objects are added and rules set from the test's thread."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl = ssl_context
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="kmock-api-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the kmock API server did not start within 20 s")
        if self._failure is not None:
            raise RuntimeError("the kmock API server failed to start") from self._failure

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced to the test thread by __init__
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server_cls: Any = aiohttp_test_server(self._ssl)
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator, server_cls=server_cls) as srv:
            self.emulator = emulator
            self.host, self.port = srv.host, srv.port
            self.url = f"{'https' if self._ssl else 'http'}://{srv.host}:{srv.port}"
            # Known, even while empty: a real server lists an empty collection, not a 404.
            for resource in (SERVICES, SECRETS, ENDPOINT_SLICES):
                emulator.resources[resource] = {}
            self._ready.set()
            await self._stop.wait()

    def _in_loop(self, func: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return func()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def put(self, resource: str, namespace: str, obj: dict[str, Any]) -> None:
        """Store an object as if it had been created through the API."""
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", namespace)

        def store() -> None:
            self.emulator.objects[resource, namespace, meta["name"]] = obj

        self._in_loop(store)

    def add_service(
        self,
        name: str,
        namespace: str,
        *,
        nodes: Sequence[tuple[str, int]] = (),
        not_ready: Sequence[tuple[str, int]] = (),
        port_name: str = "redis",
    ) -> None:
        """A Service and one EndpointSlice per node, the way the EndpointSlice controller writes them."""
        port = nodes[0][1] if nodes else 6379
        self.put(SERVICES, namespace, {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"clusterIP": "None", "ports": [{"name": port_name, "port": port}]},
        })
        for k, ((host, node_port), ready) in enumerate([*((n, True) for n in nodes),
                                                         *((n, False) for n in not_ready)]):
            self.put(ENDPOINT_SLICES, namespace, {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": f"{name}-{k}", "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": port_name, "port": node_port, "protocol": "TCP"}],
                "endpoints": [{"addresses": [host], "conditions": {"ready": ready}}],
            })

    def add_secret(self, name: str, namespace: str, data: dict[str, str]) -> None:
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        self.put(SECRETS, namespace, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                                      "type": "Opaque", "data": encoded})

    def kubeconfig(self, path: Path, *, namespace: str | None = None, context: str = "test") -> Path:
        """Write a kubeconfig whose context ``context`` points at this server."""
        ctx: dict[str, Any] = {"cluster": "kmock", "user": "tester"}
        if namespace:
            ctx["namespace"] = namespace
        import yaml

        path.write_text(yaml.safe_dump({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "kubeconfig-token"}}],
            "contexts": [{"name": context, "context": ctx}],
            "current-context": context,
        }))
        return path

    def forbid(self, resource: str, *, user: str = "system:serviceaccount:ml:default") -> None:
        """Answer 403 to every request on ``resource``, with the Status body a real server sends."""
        ref = kmock.resource(resource)
        group, plural = ref.group, ref.plural

        def deny(request: Any) -> None:
            verb = "get" if request.name else "list"
            target = f'{plural} "{request.name}"' if request.name else plural
            raise kmock.KubernetesError(
                status=403,
                reason="Forbidden",
                message=(
                    f'{target} is forbidden: User "{user}" cannot {verb} resource "{plural}" '
                    f'in API group "{group}" in the namespace "{request.namespace}"'
                ),
            )

        self._in_loop(lambda: self.emulator[kmock.resource(resource)] << deny)

    def requests(self, resource: str) -> list[Any]:
        """The requests received for ``resource``, oldest first."""
        return self._in_loop(lambda: list(self.emulator[kmock.resource(resource)]))

    def client(self) -> Any:
        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        return kubernetes.client.ApiClient(configuration=configuration)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def aiohttp_test_server(ssl_context: ssl.SSLContext | None) -> Any:
    """The server class kmock uses, serving TLS when given a context."""
    import aiohttp.test_utils

    if ssl_context is None:
        return aiohttp.test_utils.RawTestServer

    class TLSServer(aiohttp.test_utils.RawTestServer):
        # aiohttp takes the context in start_server(), which kmock calls without one.
        async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
            kwargs.setdefault("ssl", ssl_context)
            await super().start_server(loop=loop, **kwargs)

    return TLSServer


