"""The alert rules and dashboard queries use metrics and labels that augur.serving.metrics and
augur.serving.security define, with values the service produces; where promtool is installed,
it accepts every query and the alerts fire on the events they describe."""

from __future__ import annotations

import re

import grpc
import yaml
from grpc_health.v1 import health_pb2

from augur.api.v1 import admin_pb2, predictor_pb2
from tests.infra.manifests import (
    ALERTS,
    GROUPING,
    LABEL_VALUES,
    MATCHER,
    PROMETHEUS,
    ROOT,
    SELECTOR,
    TARGET_LABELS,
    alert_rules,
    all_queries,
    base_metric,
    dashboard_queries,
    defined_metrics,
    firing,
    metrics_in,
    promtool,
    series,
)


def test_alert_rules_are_named_once_with_a_severity_and_a_summary():
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in rules:
        assert rule["expr"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


# ---- queries use metrics and labels the service exports -------------------------------


def test_predictor_metrics_defines_the_metrics_infra_relies_on():
    defined = defined_metrics()
    assert {"augur_requests_total", "augur_request_latency_seconds", "augur_models_serving"} <= set(
        defined
    )


def test_metrics_are_found_in_predictor_metrics_and_predictor_security():
    defined = defined_metrics()
    assert {"augur_model_swaps_total", "augur_feature_store_circuit_open"} <= set(defined)
    assert defined["augur_caller_requests_total"] == {"caller", "method"}
    assert defined["augur_auth_refused_total"] == {"reason"}


def test_every_queried_metric_is_defined_in_predictor_metrics():
    defined = defined_metrics()
    queried = set()
    for where, query in all_queries():
        for reference, _ in SELECTOR.findall(query):
            name, _ = base_metric(reference)
            assert name in defined, (
                f"{where} queries {reference}, in neither augur/serving/metrics.py nor "
                "augur/serving/security.py"
            )
            queried.add(name)
    assert queried, "no augur_* metric is queried at all"


def test_new_failure_modes_have_alerts():
    alerted = set().union(*(metrics_in(r["expr"]) for r in alert_rules()))
    for metric in (
        "augur_rollbacks_total",  # a canary rolled back
        "augur_shadow_rows_total",  # shadow disagreement
        "augur_feature_store_circuit_open",
        "augur_shed_total",
        "augur_degraded_total",
        "augur_auth_refused_total",
        "augur_model_loads_total",
    ):
        assert metric in alerted, f"no alert watches {metric}"
    circuit = [r for r in alert_rules() if "augur_feature_store_circuit_open" in r["expr"]]
    assert all(r.get("for") == "1m" for r in circuit), "the circuit alert waits one minute"


def test_every_label_a_query_uses_is_one_the_metric_has():
    defined = defined_metrics()
    for where, query in all_queries():
        used_metrics = set()
        for reference, matchers in SELECTOR.findall(query):
            name, suffix = base_metric(reference)
            labels = defined[name] | TARGET_LABELS | ({"le"} if suffix == "_bucket" else set())
            used_metrics.add(name)
            for label, _, _ in MATCHER.findall(matchers):
                assert label in labels, f"{where}: {name} has no label {label!r}"
        known = set().union(*(defined[m] for m in used_metrics)) | TARGET_LABELS | {"le"}
        for group in GROUPING.findall(query):
            for label in filter(None, (s.strip() for s in group.split(","))):
                assert label in known, f"{where}: groups by {label!r}, which no metric has"
        for metric, label in LABEL_VALUES.findall(query):
            assert label in defined[metric], f"{where}: {metric} has no label {label!r}"


def test_label_values_in_queries_are_values_the_service_produces():
    predictor_methods = set(predictor_pb2.DESCRIPTOR.services_by_name["Predictor"].methods_by_name)
    # augur_caller_requests_total counts every RPC of the port: Admin's and health's too.
    any_method = (
        predictor_methods
        | set(admin_pb2.DESCRIPTOR.services_by_name["Admin"].methods_by_name)
        | set(health_pb2.DESCRIPTOR.services_by_name["Health"].methods_by_name)
    )
    codes = {c.name for c in grpc.StatusCode}
    source = "\n".join(p.read_text() for p in (ROOT / "augur" / "serving").rglob("*.py"))
    views = (ROOT / "examples" / "fraud" / "feature_repo" / "features.py").read_text()
    jobs = {job["job_name"] for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    for where, query in all_queries():
        for reference, matchers in SELECTOR.findall(query):
            callers = base_metric(reference)[0] == "augur_caller_requests_total"
            methods = any_method if callers else predictor_methods
            for label, op, value in MATCHER.findall(matchers):
                values = value.split("|") if op in ("=~", "!~") else [value]
                if any(re.search(r"[$.*+?()\[\]]", v) for v in values):
                    continue  # a Grafana variable or a pattern, not literal values
                for v in values:
                    if label == "code":
                        assert v in codes, f"{where}: {v!r} is not a gRPC status code"
                    elif label == "method":
                        assert v in methods, f"{where}: the server has no method {v!r}"
                    elif label in ("stage", "outcome", "guardrail", "reason"):
                        assert f'"{v}"' in source, f"{where}: the server never sets {label}={v!r}"
                    elif label == "feature_view":
                        assert f'name="{v}"' in views, f"{where}: no feature view {v!r}"
                    elif label == "job":
                        assert v in jobs, f"{where}: prometheus.yml has no job {v!r}"


def test_promtool_accepts_the_alert_rules_and_every_dashboard_query(tmp_path):
    assert promtool("check", "rules", str(ALERTS)).returncode == 0
    # Grafana's variables replaced by values a Prometheus query can hold.
    rules = [
        {
            "record": f"augur_dashboard:query_{i}",
            "expr": query.replace("$__rate_interval", "5m").replace("$model", ".*"),
        }
        for i, (_, query) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run = promtool("check", "rules", str(path))
    assert run.returncode == 0, run.stdout + run.stderr


def test_alert_rules_fire_on_the_events_they_describe(tmp_path):
    """promtool's rule unit tests over the alerts (annotations left out: they are prose).
    Series values: `_` is no sample, `a+bxn` counts up by b for n minutes."""
    m, v2, pod = {"model": "fraud_lgbm"}, {"version": "v2"}, {"pod": "augur-0"}
    input_series = [
        # A rollback on pod-0 at minute 30 (a new series), and one on pod-1 at minute 70 (an
        # existing series that counts up).
        series("augur_rollbacks_total", "_x30 1x60", **m, **v2, guardrail="error_rate", **pod),
        series(
            "augur_rollbacks_total",
            "1x70 2x30",
            **m,
            version="v3",
            guardrail="drift",
            pod="augur-1",
        ),
        series("augur_model_loads_total", "_x10 1x100", **m, **v2, outcome="failed", **pod),
        series("augur_model_loads_total", "1x100", **m, **v2, outcome="loaded", **pod),
        series("augur_feature_store_circuit_open", "0x5 1x5 0x10", **pod),
        series("augur_feature_store_circuit_open", "0x20", pod="augur-1"),
        # 6% of 1 call/s refused as invalid, 1% as missing.
        series("augur_caller_requests_total", "0+60x40", caller="fraud-api", method="Predict"),
        series("augur_auth_refused_total", "0+4x40", reason="invalid"),
        series("augur_auth_refused_total", "0+1x40", reason="missing"),
        # 2% of fraud_lgbm's Predict calls shed.
        series("augur_requests_total", "0+300x40", method="Predict", **m, version="v1", code="OK"),
        series("augur_shed_total", "0+6x40", **m),
        series("augur_degraded_total", "0+1x20", **m),
        # The shadow disagrees on 10% of rows.
        series("augur_shadow_rows_total", "0+90x40", **m, **v2, outcome="agree"),
        series("augur_shadow_rows_total", "0+10x40", **m, **v2, outcome="disagree"),
    ]
    rollback = {**m, "guardrail": "error_rate", **v2}
    later_rollback = {**m, "guardrail": "drift", "version": "v3"}
    checks = [
        firing("AugurCanaryRolledBack", "25m"),  # pod-1's series is old and unchanged
        firing("AugurCanaryRolledBack", "40m", rollback),  # pod-0's series is new
        firing("AugurCanaryRolledBack", "55m"),
        firing("AugurCanaryRolledBack", "75m", later_rollback),  # pod-1 counted another
        firing("AugurModelLoadFailed", "20m", {**m, **v2}),
        firing("AugurModelLoadFailed", "60m"),  # 50 minutes ago: over
        firing("AugurFeatureStoreCircuitOpen", "6m"),  # open, not yet for a minute
        firing("AugurFeatureStoreCircuitOpen", "9m", pod),
        firing("AugurFeatureStoreCircuitOpen", "15m"),
        firing("AugurAuthRefusals", "25m", {"reason": "invalid"}),
        firing("AugurShedding", "25m", m),
        firing("AugurDegradedAnswers", "15m", m),
        firing("AugurShadowDisagreement", "30m", {**m, **v2}),
    ]
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump({"groups": groups}))
    tests = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series, "alert_rule_test": checks}],
    }
    (tmp_path / "alerts.test.yml").write_text(yaml.safe_dump(tests))
    run = promtool("test", "rules", str(tmp_path / "alerts.test.yml"))
    assert run.returncode == 0, run.stdout + run.stderr
