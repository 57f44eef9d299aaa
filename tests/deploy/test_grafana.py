"""deploy/grafana: valid dashboard JSON whose every query uses metrics (and labels) the code exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy._support import DEPLOY, exported_metrics

DASHBOARD = DEPLOY / "grafana" / "trackdelivery-dashboard.json"
#: labels Prometheus adds to every scraped series, and the histogram bucket label
SCRAPE_LABELS = {"instance", "job"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text())
    assert isinstance(document, dict)
    return document


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], f"{panel['title']}: no query"
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_every_expression_uses_exported_metrics(dashboard: dict[str, Any]) -> None:
    exported = exported_metrics()
    assert exported, "no metrics found in the code"
    for title, expr in expressions(dashboard):
        names = set(re.findall(r"\btrackdelivery_[a-z0-9_]+", expr))
        assert names, f"{title}: {expr!r} uses no trackdelivery metric"
        for name in names:
            assert name in exported, f"{title}: {name} is not exported by the code"


def test_labels_in_expressions_exist(dashboard: dict[str, Any]) -> None:
    exported = exported_metrics()
    for title, expr in expressions(dashboard):
        metrics = [exported[name] for name in re.findall(r"\btrackdelivery_[a-z0-9_]+", expr)]
        known = set(SCRAPE_LABELS).union(*(metric.labels for metric in metrics))
        if any(name.endswith("_bucket") for name in re.findall(r"\btrackdelivery_[a-z0-9_]+", expr)):
            known.add("le")
        used = set()
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            used |= {label.strip() for label in group.split(",") if label.strip()}
        for matchers in re.findall(r"\{([^}]*)\}", expr):
            used |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
        assert used <= known, f"{title}: labels {sorted(used - known)} are not on {[m.name for m in metrics]}"


def test_each_component_has_panels(dashboard: dict[str, Any]) -> None:
    text = " ".join(expr for _, expr in expressions(dashboard))
    for component in ("shipper", "processor", "http", "alerts"):
        assert f"trackdelivery_{component}_" in text, f"no panel for trackdelivery_{component}_*"
