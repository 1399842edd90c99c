"""The Grafana dashboard is one Grafana loads: panels that do not overlap, a Prometheus data
source variable, and rows that group the metrics of their concern."""

from __future__ import annotations

from tests.infra.manifests import (
    dashboard_panels,
    grafana_dashboard,
    metrics_in,
)


def test_dashboard_is_a_grafana_dashboard_whose_panels_do_not_overlap():
    dashboard = grafana_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"panel {panel['title']!r} is wider than the grid"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            assert grid == {"x": 0, "y": grid["y"], "w": 24, "h": 1}, panel["title"]
            assert not panel["collapsed"] and panel["panels"] == [], panel["title"]
            continue
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_dashboard_data_source_is_a_prometheus_variable():
    dashboard = grafana_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard_panels():
        for item in (panel, *panel["targets"]):
            expected = {"type": "prometheus", "uid": "${datasource}"}
            assert item["datasource"] == expected, panel["title"]


def test_dashboard_rows_group_rollouts_reliability_and_callers():
    """Each row holds the panels below it, up to the next row; each new row shows the metrics
    of its concern."""
    panels = sorted(
        grafana_dashboard()["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])
    )
    rows: dict[str, set[str]] = {}
    current = None
    for panel in panels:
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], set())
        elif current is not None:
            current.update(m for t in panel["targets"] for m in metrics_in(t["expr"]))
    expected = {
        "Rollouts": {
            "augur_model_swaps_total",
            "augur_requests_total",  # canary share, by its version label
            "augur_canary_fallbacks_total",
            "augur_rollbacks_total",
            "augur_shadow_rows_total",
            "augur_shadow_score_diff",
        },
        "Reliability": {
            "augur_shed_total",
            "augur_deadline_dropped_total",
            "augur_degraded_total",
            "augur_feature_store_errors_total",
            "augur_feature_store_circuit_open",
        },
        "Callers": {"augur_caller_requests_total", "augur_auth_refused_total"},
    }
    for title, wanted in expected.items():
        assert title in rows, f"the dashboard has no {title!r} row"
        assert wanted <= rows[title], f"row {title!r} lacks {sorted(wanted - rows[title])}"
