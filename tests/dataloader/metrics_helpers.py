"""Helpers of the metrics tests: scraping over real HTTP, and a clean export state per test."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest

from shardcache.metrics import export

pytest.importorskip("prometheus_client")


@pytest.fixture
def no_export(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nothing served or pushed before and after the test, and no metrics settings in the environment."""
    for name in (export.ENV_PORT, export.ENV_GATEWAY, export.ENV_INTERVAL, export.ENV_JOB, "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    export.stop()
    yield
    export.stop()


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """GET /metrics over HTTP: sample name -> [(labels, value)]."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return samples_of(text)


def samples_of(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        out.setdefault(family.name, [])
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [v for got, v in samples.get(name, []) if all(got.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]
