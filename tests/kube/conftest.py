"""Fixtures: the fake Kubernetes API server of fake_api.py, over HTTP or HTTPS."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fake_api import ApiServer


@pytest.fixture
def api_server() -> Iterator[ApiServer]:
    server = ApiServer()
    yield server
    server.close()


@pytest.fixture
def tls_api_server(tmp_path: Path) -> Iterator[tuple[ApiServer, Path]]:
    """An API server over HTTPS, as in a pod, and the path of its CA certificate."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.crt"
    ca.cert_pem.write_to_path(str(ca_file))
    server = ApiServer(ssl_context=context)
    yield server, ca_file
    server.close()
