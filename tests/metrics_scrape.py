"""Scraping GET /metrics in tests: every sample by name and labels. Used by
tests/api/test_metrics.py and tests/integration/test_metrics.py."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.stack import Stack

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(stack: Stack) -> Samples:
    r = stack.client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    found: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]
