"""The Grafana dashboard and the Prometheus rules only use metrics the appliance exports.

The exported names come from rendering a fresh :class:`appliance.metrics.Metrics` registry
(every labelled metric touched once, so its samples appear), the used names from every
PromQL expression of the dashboard (panels and template queries) and of the alert rules.
promtool (scripts/install-test-tools.sh puts it in .venv/tools/bin) checks the rules, the
scrape config, the exposition format, and the behaviour of some alerts on synthetic series.
Missing tools FAIL, never skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase

from appliance.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "config" / "grafana" / "dashboards" / "audiogen.json"
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = ROOT / "config" / "prometheus" / "prometheus.yml"
# Series that Prometheus makes itself; alert rules may use them.
PROMETHEUS_SERIES = {"up"}

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "start", "end",
}


# --- helpers ---------------------------------------------------------------------------------

@cache
def exposition() -> str:
    """The text exposition of a fresh registry, every labelled metric touched once."""
    metrics = Metrics()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase) and value._labelnames:
            value.labels(*["x"] * len(value._labelnames))
    return generate_latest(metrics.registry).decode("utf-8")


@cache
def exported_sample_names() -> frozenset[str]:
    names = set()
    for line in exposition().splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return frozenset(names)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (also with Grafana's $variables)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', " ", expr)  # strings
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)  # Grafana variables
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    names = set()
    for match in re.finditer(r"(?<![\w:.])[A-Za-z_:][\w:]*", s):
        word = match.group()
        if word.lower() in _KEYWORDS or s[match.end():].lstrip().startswith("("):
            continue  # keyword, function or aggregation
        names.add(word)
    return names


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every panel target and template query of the dashboard."""
    found = []
    for panel in walk_panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            if "expr" in target:
                found.append((f"panel {panel['title']!r} {target.get('refId')}", target["expr"]))
    for variable in dashboard()["templating"]["list"]:
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        query = query.get("query", "") if isinstance(query, dict) else query
        label_values = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", query)
        found.append((f"variable {variable['name']!r}", label_values.group(1) if label_values else query))
    return found


def alert_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [(f"rule {rule.get('alert') or rule.get('record')!r}", rule["expr"])
            for group in rules["groups"] for rule in group["rules"]]


def promtool() -> str:
    found = ROOT / ".venv" / "tools" / "bin" / "promtool"
    if found.is_file():
        return str(found)
    on_path = shutil.which("promtool")
    if on_path is None:
        pytest.fail("promtool is missing: run scripts/install-test-tools.sh (it unpacks it from the "
                    "Debian prometheus package into .venv/tools/bin)")
    return on_path


def run_promtool(*args: str, stdin: str | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], input=stdin, capture_output=True, text=True,
                          timeout=120, cwd=cwd)


# --- the extractor itself --------------------------------------------------------------------

@pytest.mark.parametrize(("expr", "names"), [
    ('histogram_quantile(0.95, sum by (le, path) (rate(a_bucket{x=~"$i"}[$__rate_interval])))',
     {"a_bucket"}),
    ("sum by (r) (rate(a_total[5m])) / ignoring (r) group_left sum(rate(a_total[5m]))", {"a_total"}),
    ("max without (w, d) (ready) == 0 and on (i) up offset 1d > bool 2", {"ready", "up"}),
    ('x{l="sum(y)"} > 1e3 or z', {"x", "z"}),
    ("sum(rate(m[1h])) by (instance)", {"m"}),
])
def test_metric_name_extraction(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# --- the dashboard ---------------------------------------------------------------------------

def test_dashboard_is_provisioning_ready() -> None:
    data = dashboard()
    assert data["uid"] and data["title"]
    assert "id" not in data or data["id"] is None  # provisioning assigns the id
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [panel["id"] for panel in walk_panels(data["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in walk_panels(data["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]


def unexported(exprs: Iterable[tuple[str, str]], exported: frozenset[str]) -> list[str]:
    """Each query that names no metric, or a metric the appliance does not export."""
    problems = []
    for where, expr in exprs:
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: no metric found in {expr!r}")
        problems += [f"{where}: {name} is not exported" for name in sorted(names - exported)]
    return problems


def test_dashboard_uses_only_exported_metrics() -> None:
    problems = unexported(dashboard_exprs(), exported_sample_names())
    assert not problems, "\n".join(problems)


def test_dashboard_charts_the_promised_metrics() -> None:
    used = set().union(*(metric_names(expr) for _, expr in dashboard_exprs()))
    for name in (
        "audiogen_cache_lookups_total", "audiogen_request_duration_seconds_bucket",
        "audiogen_generation_seconds_bucket", "audiogen_queue_wait_seconds_bucket",
        "audiogen_queue_depth", "audiogen_cache_items", "audiogen_cache_bytes",
        "audiogen_worker_up", "audiogen_worker_ready", "audiogen_worker_restarts_total",
        "audiogen_model_load_seconds", "audiogen_mqtt_connected", "audiogen_mqtt_reconnects_total",
        "audiogen_mqtt_messages_received_total", "audiogen_mqtt_messages_sent_total",
        "audiogen_malformed_requests_total", "audiogen_build_info",
        "audiogen_clap_similarity_bucket", "audiogen_quality_gate_rejections_total",
        "audiogen_semantic_similarity_bucket", "audiogen_cache_evictions_total",
        "audiogen_worker_gpu_memory_bytes", "audiogen_requests_total",
    ):
        assert name in used, f"the dashboard has no panel for {name}"


# --- the alert rules -------------------------------------------------------------------------

def test_alerts_use_only_exported_metrics() -> None:
    problems = unexported(alert_exprs(), exported_sample_names() | PROMETHEUS_SERIES)
    assert not problems, "\n".join(problems)


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config() -> None:
    result = run_promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_metrics_on_the_exposition() -> None:
    result = run_promtool("check", "metrics", stdin=exposition())
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, f"promtool check metrics:\n{output}"


_ALERT_TESTS = """
rule_files:
  - {alerts}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'audiogen_worker_up{{job="audiogen", instance="a", worker="w0", device="0"}}'
        values: '1 1 0x10'
      - series: 'audiogen_worker_ready{{job="audiogen", instance="a", worker="w0", device="0"}}'
        values: '1 1 0x15'
      - series: 'audiogen_worker_restarts_total{{job="audiogen", instance="a", worker="w0", reason="died"}}'
        values: '0 0 1 2 3 3 3'
      - series: 'audiogen_mqtt_connected{{job="audiogen", instance="a"}}'
        values: '1 1 1 1 1 1 1 1 1 1 1 1'
      - series: 'up{{job="audiogen", instance="a"}}'
        values: '1x15'
    alert_rule_test:
      - eval_time: 5m
        alertname: AudiogenWorkerRestartLoop
        exp_alerts:
          - exp_labels: {{severity: warning, job: audiogen, instance: a, worker: w0, reason: died}}
      - eval_time: 3m
        alertname: AudiogenWorkerDown
        exp_alerts: []
      - eval_time: 8m
        alertname: AudiogenWorkerDown
        exp_alerts:
          - exp_labels: {{severity: warning, job: audiogen, instance: a, worker: w0, device: "0"}}
      - eval_time: 14m
        alertname: AudiogenNoReadyWorker
        exp_alerts:
          - exp_labels: {{severity: critical, job: audiogen, instance: a}}
      - eval_time: 10m
        alertname: AudiogenMqttDisconnected
        exp_alerts: []
      - eval_time: 10m
        alertname: AudiogenDown
        exp_alerts: []
  - interval: 5m
    input_series:
      # A day at 40% hits (0.08/s of 0.2/s), then 1% hits (0.002/s of 0.2/s).
      - series: 'audiogen_cache_lookups_total{{job="audiogen", instance="a", result="exact"}}'
        values: '0+24x288 6912+0.6x24'
      - series: 'audiogen_cache_lookups_total{{job="audiogen", instance="a", result="miss"}}'
        values: '0+36x288 10368+59.4x24'
    alert_rule_test:
      - eval_time: 1d
        alertname: AudiogenCacheHitRateCollapse
        exp_alerts: []
      - eval_time: 26h
        alertname: AudiogenCacheHitRateCollapse
        exp_alerts:
          - exp_labels: {{severity: warning, job: audiogen, instance: a}}
  - interval: 1m
    input_series:
      - series: 'audiogen_queue_depth{{job="audiogen", instance="a"}}'
        values: '0 0 30x10'
      - series: 'audiogen_queue_capacity{{job="audiogen", instance="a"}}'
        values: '32x12'
      - series: 'audiogen_cache_items{{job="audiogen", instance="a"}}'
        values: '9000x5 9700x80'
      - series: 'audiogen_cache_max_items{{job="audiogen", instance="a"}}'
        values: '10000x85'
      - series: 'audiogen_cache_bytes{{job="audiogen", instance="a"}}'
        values: '1000x85'
      - series: 'audiogen_cache_max_bytes{{job="audiogen", instance="a"}}'
        values: '2000x85'
      - series: 'audiogen_mqtt_connected{{job="audiogen", instance="a"}}'
        values: '1 1 0x10'
    alert_rule_test:
      - eval_time: 5m
        alertname: AudiogenQueueSaturated
        exp_alerts: []
      - eval_time: 8m
        alertname: AudiogenQueueSaturated
        exp_alerts:
          - exp_labels: {{severity: warning, job: audiogen, instance: a}}
      - eval_time: 60m
        alertname: AudiogenCacheItemsNearCap
        exp_alerts: []
      - eval_time: 70m
        alertname: AudiogenCacheItemsNearCap
        exp_alerts:
          - exp_labels: {{severity: info, job: audiogen, instance: a}}
      - eval_time: 70m
        alertname: AudiogenCacheBytesNearCap
        exp_alerts: []
      - eval_time: 3m
        alertname: AudiogenMqttDisconnected
        exp_alerts: []
      - eval_time: 6m
        alertname: AudiogenMqttDisconnected
        exp_alerts:
          - exp_labels: {{severity: critical, job: audiogen, instance: a}}
  - interval: 5m
    input_series:
      # A day of one generation a minute scoring in (0.35, 0.4], then two hours in (0.1, 0.2].
{clap_buckets}
      - series: 'audiogen_clap_similarity_count{{job="audiogen", instance="a"}}'
        values: '0+5x312'
      # Four of every five new clips rejected by the quality gate, for two hours.
      - series: 'audiogen_quality_gate_rejections_total{{job="audiogen", instance="b"}}'
        values: '0+4x24'
      - series: 'audiogen_generation_seconds_count{{job="audiogen", instance="b"}}'
        values: '0+5x24'
    alert_rule_test:
      - eval_time: 2h
        alertname: AudiogenQualityDrop
        exp_alerts: []
      - eval_time: 1d
        alertname: AudiogenQualityDrop
        exp_alerts: []
      - eval_time: 26h
        alertname: AudiogenQualityDrop
        exp_alerts:
          - exp_labels: {{severity: warning, job: audiogen, instance: a}}
      - eval_time: 20m
        alertname: AudiogenQualityGateRejecting
        exp_alerts: []
      - eval_time: 2h
        alertname: AudiogenQualityGateRejecting
        exp_alerts:
          - exp_labels: {{severity: warning, job: audiogen, instance: b}}
"""


def _clap_buckets() -> str:
    """Cumulative CLAP histogram buckets for the quality-drop test (see _ALERT_TESTS)."""
    lines = []
    for bound in [*Metrics().clap_similarity._upper_bounds]:
        le = "+Inf" if bound == float("inf") else repr(float(bound))
        if bound <= 0.1:
            values = "0x312"  # never
        elif bound < 0.4:
            values = "0x288 0+5x24"  # only the poor clips of the last two hours
        else:
            values = "0+5x312"  # every clip
        series = f'audiogen_clap_similarity_bucket{{job="audiogen", instance="a", le="{le}"}}'
        lines.append(f"      - series: '{series}'\n        values: '{values}'")
    return "\n".join(lines)


def test_alerts_fire_as_intended(tmp_path: Path) -> None:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)  # promtool would compare them word for word
    bare = tmp_path / "alerts.yml"
    bare.write_text(yaml.safe_dump(rules))
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(textwrap.dedent(_ALERT_TESTS).format(alerts=bare, clap_buckets=_clap_buckets()))
    result = run_promtool("test", "rules", str(tests), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
