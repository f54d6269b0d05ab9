"""The monitoring stack and the Kubernetes example, checked statically (no Docker engine or cluster here).

Every metric a dashboard panel or an alerting rule asks for must be one the processor exposes, so a
renamed metric fails here instead of leaving an empty graph or an alert that can never fire.
"""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from local_kafka.brokers import PROJECT_DIR, free_ports
from login_pipeline.app import build_info, live_settings
from login_pipeline.client import Partition
from login_pipeline.config import SETTINGS, load
from login_pipeline.events import TurnEnded
from login_pipeline.insights import Insights
from login_pipeline.live import LiveInsights
from login_pipeline.metrics import PipelineMetrics
from login_pipeline.results import MALFORMED_JSON, Rejection
from login_pipeline.status_server import Verdict, serving
from tests.fakes import FakePublisher

MONITORING = PROJECT_DIR / "monitoring"
COMPOSE = yaml.safe_load((PROJECT_DIR / "docker-compose.yml").read_text())
PROMETHEUS = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
ALERTS = yaml.safe_load((MONITORING / "alerts.yml").read_text())
DASHBOARD = json.loads((MONITORING / "grafana/dashboards/login-processor.json").read_text())
MANIFESTS = {doc["kind"]: doc for doc in yaml.safe_load_all((PROJECT_DIR / "deploy/kubernetes.yaml").read_text())}
DEPLOYMENT = MANIFESTS["Deployment"]
METRIC = re.compile(r"\blogin_processor_[a-z_]+\b")


@pytest.fixture(scope="module")
def exposed() -> set[str]:
    """Every sample name the processor's /metrics serves, read from a real endpoint once each labelled
    series has a value."""
    insights = Insights()
    insights.observe([Rejection(MALFORMED_JSON, None, "not JSON")])
    config = load([], "test", environ={})
    live = LiveInsights(live_settings(config), FakePublisher(), str)
    metrics = PipelineMetrics(build_info(config), insights.reading, live=live)
    for topic in ("output", "dlq"):
        metrics.produced.labels(topic).inc()
        metrics.acknowledged.labels(topic).inc()
    metrics.turn_ended(TurnEnded(0, 1, {Partition("user-login", 0): 0}))
    port = free_ports(1)[0]
    with serving("127.0.0.1", port, metrics.registry, lambda: Verdict(True), lambda silent: Verdict(True), dict):
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def alert_rules() -> list[dict]:
    return [rule for group in ALERTS["groups"] for rule in group["rules"]]


def panel_exprs() -> list[str]:
    return [target["expr"] for panel in DASHBOARD["panels"] for target in panel["targets"]]


def test_every_metric_the_dashboard_and_the_rules_ask_for_is_exposed(exposed):
    asked = {name for expr in panel_exprs() + [rule["expr"] for rule in alert_rules()] for name in METRIC.findall(expr)}
    assert asked, "no metric found in the expressions"
    assert sorted(asked - exposed) == []


def test_metric_names_follow_prometheus_practice(exposed):
    for name in exposed:
        assert name.startswith("login_processor_"), name
        assert not re.search(r"_(ms|milliseconds|minutes|bytes_total_total)$", name), name  # base units
    counters = [n for n in exposed if n.endswith("_total")]
    assert "login_processor_messages_consumed_total" in counters and "login_processor_commit_failures_total" in counters
    assert {"login_processor_alerts_total", "login_processor_windows_published_total"} <= set(counters)


def test_the_alerting_rules_cover_lag_dead_letters_readiness_and_commits():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert set(rules) == {
        "LoginProcessorLagGrowing",
        "LoginProcessorDeadLetterRateHigh",
        "LoginProcessorNotReady",
        "LoginProcessorNoCommit",
    }
    for rule in rules.values():
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        assert rule["expr"].count("(") == rule["expr"].count(")") and rule["expr"].count("[") == rule["expr"].count("]")
    job = PROMETHEUS["scrape_configs"][0]["job_name"]
    assert f'up{{job="{job}"}}' in rules["LoginProcessorNotReady"]["expr"]
    assert "login_processor_dead_letters_total" in json.dumps(DASHBOARD)


def test_prometheus_scrapes_every_processor_replica_and_loads_the_rules():
    (job,) = PROMETHEUS["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["processor"] and discovery["type"] == "A"
    assert discovery["port"] == int(COMPOSE["services"]["processor"]["environment"]["METRICS_PORT"])
    assert PROMETHEUS["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_the_monitoring_profile_runs_pinned_prometheus_and_grafana_with_the_files_mounted():
    services = COMPOSE["services"]
    for name, image in (("prometheus", "prom/prometheus"), ("grafana", "grafana/grafana")):
        service = services[name]
        assert service["profiles"] == ["monitoring"]
        repository, _, tag = service["image"].rpartition(":")
        assert repository == image and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), service["image"]
        assert all(port.startswith("127.0.0.1:") for port in service["ports"])  # local only
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (PROJECT_DIR / source).exists(), source
    mounted = {v.split(":")[0]: v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert mounted["./monitoring/alerts.yml"] == PROMETHEUS["rule_files"][0]
    processor = services["processor"]
    assert processor["environment"]["METRICS_HOST"] == "0.0.0.0"
    assert "/readyz" in " ".join(processor["healthcheck"]["test"])


def test_grafana_is_provisioned_with_the_prometheus_data_source_and_the_dashboard():
    datasources = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    mounted = {v.split(":")[1]: v.split(":")[0] for v in COMPOSE["services"]["grafana"]["volumes"]}
    assert mounted[providers["providers"][0]["options"]["path"]] == "./monitoring/grafana/dashboards"
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
        assert all(target["datasource"]["uid"] == source["uid"] for target in panel["targets"])


def test_the_dashboard_shows_throughput_outcomes_dead_letters_lag_latencies_and_event_delay():
    titles = " ".join(panel["title"].lower() for panel in DASHBOARD["panels"])
    for topic in ("throughput", "outcomes", "dead letters", "lag", "latencies", "event delay"):
        assert topic in titles, topic
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    positions = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in DASHBOARD["panels"]]
    assert len(positions) == len(set(positions))  # no panel hidden under another


def test_the_kubernetes_deployment_probes_drains_and_keeps_secrets_in_a_secret():
    assert DEPLOYMENT["kind"] == "Deployment" and DEPLOYMENT["apiVersion"] == "apps/v1"
    spec = DEPLOYMENT["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= 150  # the longest acknowledgement wait fits
    (container,) = spec["containers"]
    assert not container["image"].endswith(":latest")
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    env = {e["name"]: e for e in container["env"]}
    assert env["METRICS_PORT"]["value"] == str(port) and env["METRICS_HOST"]["value"] == "0.0.0.0"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert env["PROBE_PORT"]["value"] == str(ports["probes"]) != str(port)
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "probes"  # the listener no client of 9400 can fill
    for secret in ("PII_HASH_KEY", "SASL_PASSWORD"):
        assert "value" not in env[secret] and env[secret]["valueFrom"]["secretKeyRef"]["key"] == secret
    assert set(env) <= {setting.env for setting in SETTINGS}
    assert env["REQUIRE_PII_HASH_KEY"]["value"] == "on"  # replicas must share one key: none is no random one
    resources = container["resources"]
    assert resources["requests"]["memory"] and resources["limits"]["memory"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"] == DEPLOYMENT["spec"]["template"]["metadata"]["labels"]


def test_a_misspelt_metric_in_an_expression_would_be_caught(exposed):
    assert set(METRIC.findall("sum(rate(login_processor_messages_consumd_total[1m]))")) - exposed


def test_the_network_policy_admits_prometheus_to_the_metrics_port_and_no_pod_to_the_probes():
    policy = MANIFESTS["NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"] == DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert [port["port"] for port in rule["ports"]] == [9400]
    assert all(source.get("podSelector", {}).get("matchLabels") for source in rule["from"])  # not every pod
