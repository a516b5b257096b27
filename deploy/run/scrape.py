"""Scraping the processes' Prometheus endpoints: the final metrics dump of a run and the
series names it exports (what the Grafana dashboard and its tests rely on).

A dump (``<run_dir>/metrics_final.prom``) is the text exposition of every target, each
preceded by one ``# amago-scrape: <address>`` comment line, so it stays valid Prometheus text
and still says which process exported what.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

FINAL_DUMP = "metrics_final.prom"  # file name of the final dump inside a run directory
_HEADER = "# amago-scrape: "


def scrape(address: str, timeout_s: float = 5.0) -> str:
    """The text exposition served at ``http://<address>/metrics``."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout_s) as r:
        return r.read().decode()


def scrape_all(addresses: Iterable[str], timeout_s: float = 5.0) -> dict[str, str]:
    """``address -> text`` for every target; an unreachable one maps to ``""``."""
    out: dict[str, str] = {}
    for a in addresses:
        try:
            out[a] = scrape(a, timeout_s)
        except OSError:
            out[a] = ""
    return out


def write_dump(path: str | Path, scrapes: dict[str, str]) -> Path:
    path = Path(path)
    parts = [f"{_HEADER}{a}\n{text}" for a, text in sorted(scrapes.items())]
    path.write_text("".join(parts))
    return path


def read_dump(path: str | Path) -> dict[str, str]:
    """Inverse of :func:`write_dump`."""
    out: dict[str, str] = {}
    current: str | None = None
    for line in Path(path).read_text().splitlines(keepends=True):
        if line.startswith(_HEADER):
            current = line[len(_HEADER) :].strip()
            out[current] = ""
        elif current is not None:
            out[current] += line
    return out


def series_names(text: str) -> set[str]:
    """Names of the samples in ``text`` as PromQL sees them (counters with ``_total``,
    histograms as ``_bucket``/``_sum``/``_count``); families without samples don't count."""
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
