"""Prometheus alert rules (promtool check + unit tests) and the Grafana dashboard.

The YAML files are read with small line-based parsers (pyyaml is not a dependency);
the counts they find are cross-checked against promtool's own, so a layout change that
fools them fails here instead of silently passing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.helpers.procs import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
CONFIG = PROMETHEUS / "prometheus.yml"
DASHBOARD = GRAFANA / "liveml.json"

# Every metric the services expose, by its exposition name.
_HISTOGRAMS = {
    "liveml_gateway_request_seconds",
    "liveml_worker_request_seconds",
    "liveml_worker_batch_size",
    "liveml_events_append_seconds",
    "liveml_trainer_stage_seconds",
}
# Metrics of the whole event stream, not of one model: dashboard panels show them unfiltered.
STREAM_WIDE = {
    "liveml_events_append_failures_total",
    "liveml_events_append_seconds_bucket",
    "liveml_events_last_sequence",
    "liveml_gateway_prediction_buffer",
    "liveml_joiner_lag_events",
    "liveml_joiner_position",
    # the trainer's: of the trainer process, not of one model
    "liveml_trainer_stage_seconds_bucket",
    "liveml_trainer_last_poll_timestamp_seconds",
}
METRICS = {
    # gateway
    "liveml_gateway_requests_total",
    "liveml_gateway_in_flight",
    "liveml_gateway_redistributed_total",
    "liveml_gateway_retries_total",
    "liveml_gateway_shadow_dropped_total",
    "liveml_gateway_shadow_compared_total",
    "liveml_gateway_feedback_total",
    "liveml_gateway_group_predictions_total",
    # worker
    "liveml_worker_requests_total",
    "liveml_worker_load_seconds",
    "liveml_worker_version_state",
    # registry
    "liveml_rollout_target_percent",
    "liveml_rollout_phase",
    "liveml_rollout_decisions_total",
    "liveml_rollout_rollbacks_total",
    "liveml_version_ready_workers",
    "liveml_version_error_rate",
    "liveml_version_p99_seconds",
    "liveml_version_accuracy",
    "liveml_version_drift_psi",
    "liveml_version_drift_psi_max",
    "liveml_version_fairness_gap",
    "liveml_alerts_firing",
    "liveml_registry_lease_sweeps_held_total",
    # the event stream (any process that appends; the gateway's prediction log; the joiner)
    "liveml_events_appended_total",
    "liveml_events_duplicates_total",
    "liveml_events_append_failures_total",
    "liveml_events_last_sequence",
    "liveml_gateway_predictions_logged_total",
    "liveml_gateway_predictions_dropped_total",
    "liveml_gateway_prediction_buffer",
    "liveml_joiner_joined_total",
    "liveml_joiner_unmatched_total",
    "liveml_joiner_lag_events",
    "liveml_joiner_position",
    # trainer (batch runs)
    "liveml_trainer_trigger_requests_total",
    "liveml_trainer_runs_total",
    "liveml_trainer_gate_failures_total",
    "liveml_trainer_policies",
    "liveml_trainer_last_poll_timestamp_seconds",
    # trainer (online learners)
    "liveml_learner_lag_events",
    "liveml_learner_applied_sequence",
    "liveml_learner_examples_learned_total",
    "liveml_learner_prequential_accuracy",
    "liveml_learner_prequential_rmse",
    "liveml_learner_drift_state",
    "liveml_learner_publishes_total",
    "liveml_learner_quarantined_total",
} | {f"{name}{suffix}" for name in _HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}

METRIC_NAME = re.compile(r"\bliveml_[a-z0-9_]+\b")


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    require(path is not None, "promtool (Debian package prometheus)")
    assert path is not None
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)


def ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}\n{result.stderr}"


def rules_found(output: str) -> int:
    match = re.search(r"SUCCESS: (\d+) rules found", output)
    assert match, output
    return int(match.group(1))


def alert_blocks() -> dict[str, str]:
    """Each alert in alerts.yml: its name and the text of its rule."""
    blocks: dict[str, str] = {}
    parts = re.split(r"^\s*- alert:\s*", ALERTS.read_text(), flags=re.M)
    for part in parts[1:]:
        name, _, body = part.partition("\n")
        assert name.strip() not in blocks, f"alert {name} defined twice"
        blocks[name.strip()] = body
    return blocks


def rule_tests() -> Iterator[tuple[str, bool]]:
    """Each alert_rule_test case in alerts_test.yml: the alert and whether it expects it firing."""
    for case in re.split(r"^\s*- eval_time:", ALERTS_TEST.read_text(), flags=re.M)[1:]:
        case = re.split(r"^\s*- interval:", case, flags=re.M)[0]
        name = re.search(r"^\s*alertname:\s*(\S+)", case, flags=re.M)
        assert name, case
        firing = "exp_labels:" in case
        assert firing or re.search(r"^\s*exp_alerts:\s*\[\]", case, flags=re.M), case
        yield name.group(1), firing


def test_alert_rules_are_valid(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(ALERTS))
    ok(result)
    blocks = alert_blocks()
    assert rules_found(result.stdout + result.stderr) == len(blocks)
    for name, body in blocks.items():
        assert re.search(r"^\s*severity:\s*(page|ticket|info)\s*$", body, flags=re.M), name
        assert re.search(r"^\s*summary:", body, flags=re.M), name
        assert re.search(r"^\s*description:", body, flags=re.M), name
        assert "$labels" in body, name
        names = set(METRIC_NAME.findall(body.split("annotations:")[0]))
        assert names, name
        assert names <= METRICS, f"{name} uses unknown metrics {names - METRICS}"


def test_prometheus_config_is_valid(promtool: str) -> None:
    # rule_files is relative to the config's directory, as in the container.
    result = run(promtool, "check", "config", str(CONFIG))
    ok(result)
    assert "alerts.yml" in result.stdout + result.stderr
    text = CONFIG.read_text()
    for target in ("registry:9102", "worker-1:9101", "worker-2:9101", "gateway:9100"):
        assert target in text


def test_alert_rule_unit_tests_pass_and_cover_every_alert(promtool: str) -> None:
    ok(run(promtool, "test", "rules", str(ALERTS_TEST)))
    alerts = set(alert_blocks())
    cases = list(rule_tests())
    assert {name for name, _ in cases} <= alerts, "a test names an alert alerts.yml lacks"
    assert {name for name, firing in cases if firing} == alerts, "some alert is never fired"
    assert {name for name, firing in cases if not firing} == alerts, "some alert is never quiet"


# --- Grafana -------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def queries(node: Any) -> Iterator[str]:
    """Every PromQL text in the dashboard: panel targets, annotations, variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, dict) and "qryType" in value:
                yield str(value["query"])
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == "liveml"
    assert board["schemaVersion"] >= 36
    panels = list(all_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {var["name"]: var for var in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["type"] == "query"
    assert "label_values(liveml_gateway_requests_total, model)" in variables["model"]["definition"]
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            unfiltered = set(METRIC_NAME.findall(target["expr"])) <= STREAM_WIDE
            assert '$model"' in target["expr"] or "in_flight" in target["expr"] or unfiltered, (
                panel["title"]
            )
    titles = " ".join(panel["title"].lower() for panel in panels)
    for word in ("traffic", "target percent", "latency", "error", "drift", "accuracy"):
        assert word in titles
    for word in ("fairness", "shadow", "ready", "phase"):
        assert word in titles
    for word in ("events appended", "prediction log", "joins", "lag"):
        assert word in titles
    assert any(
        "liveml_rollout_decisions_total" in a.get("expr", "") for a in board["annotations"]["list"]
    )


def test_dashboard_uses_only_known_metrics() -> None:
    texts = list(queries(dashboard()))
    assert len(texts) > 10
    for text in texts:
        names = set(METRIC_NAME.findall(text))
        assert names, f"no liveml metric in {text!r}"
        assert names <= METRICS, f"unknown metrics {names - METRICS} in {text!r}"


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """promtool checks each panel and annotation query, Grafana's variables filled in."""
    board = dashboard()
    exprs = [t["expr"] for p in all_panels(board["panels"]) for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    fill = {"$__rate_interval": "1m", "$__range": "1h", "$model": "iris"}
    rules = []
    for i, expr in enumerate(exprs):
        for var, value in fill.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"  # JSON is YAML
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool, "check", "rules", str(path))
    ok(result)
    assert rules_found(result.stdout + result.stderr) == len(exprs)


def test_grafana_provisioning() -> None:
    datasource = (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "url: http://prometheus:9090" in datasource
    assert "type: prometheus" in datasource
    dashboards = (GRAFANA / "provisioning" / "dashboards" / "liveml.yml").read_text()
    assert "type: file" in dashboards
    assert "path: /var/lib/grafana/dashboards" in dashboards


def test_the_event_stream_metrics_listed_are_the_ones_exported() -> None:
    """METRICS names what the services register, so a renamed metric fails here."""
    from prometheus_client import REGISTRY

    from services.common.events import metrics  # noqa: F401  (registers them)

    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    prefixes = ("liveml_events", "liveml_joiner", "liveml_gateway_predict")
    exported = {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith(prefixes)
        for suffix in suffixes[family.type]
    }
    assert exported == {m for m in METRICS if m.startswith(prefixes)}
