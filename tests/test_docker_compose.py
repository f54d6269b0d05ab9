"""The Docker Compose stack, checked by everything short of running it (no Docker engine here)."""

import json
import re
from importlib import resources

import jsonschema
import pytest
import yaml

from local_kafka.brokers import DLQ_RETENTION_MS, PROJECT_DIR
from login_pipeline.config import SETTINGS

COMPOSE = yaml.safe_load((PROJECT_DIR / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
CP_TAG = re.compile(r"^7\.\d+\.\d+$")


def image(service: str) -> tuple[str, str]:
    name, _, tag = SERVICES[service]["image"].rpartition(":")
    return name, tag


def test_confluent_images_are_pinned_to_one_7x_release_with_zookeeper_mode():
    tags = {image(s)[1] for s in ("zookeeper", "kafka-input", "kafka-output", "topic-init")}
    assert image("zookeeper")[0] == "confluentinc/cp-zookeeper"
    assert {image(s)[0] for s in ("kafka-input", "kafka-output", "topic-init")} == {"confluentinc/cp-kafka"}
    assert len(tags) == 1 and CP_TAG.match(tags.pop())


def test_every_image_names_a_tag_and_only_the_upstream_generator_uses_latest():
    for name, service in SERVICES.items():
        if "image" in service:
            assert ":" in service["image"], name
    assert [name for name, s in SERVICES.items() if s.get("image", "").endswith(":latest")] == ["data-generator"]


@pytest.mark.parametrize(
    "service, chroot, host_port", [("kafka-input", "input", 29092), ("kafka-output", "output", 29093)]
)
def test_each_broker_is_its_own_cluster_on_one_zookeeper_reachable_from_host_and_network(service, chroot, host_port):
    env = SERVICES[service]["environment"]
    assert env["KAFKA_ZOOKEEPER_CONNECT"] == f"zookeeper:2181/{chroot}"
    assert SERVICES[service]["ports"] == [f"127.0.0.1:{host_port}:{host_port}"]
    assert env["KAFKA_LISTENERS"] == f"INTERNAL://0.0.0.0:9092,EXTERNAL://0.0.0.0:{host_port}"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == f"INTERNAL://{service}:9092,EXTERNAL://localhost:{host_port}"
    assert env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"] == "INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "INTERNAL"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1  # a single broker cannot hold 3 replicas


def test_every_published_port_listens_on_this_host_only():
    """PLAINTEXT brokers with no authorizer, published on every interface, would let anyone on the LAN
    read raw ip and device_id from user-login and write the topics the processor reads back."""
    published = [(name, port) for name, service in SERVICES.items() for port in service.get("ports", [])]
    assert published and all(str(port).startswith("127.0.0.1:") for _, port in published), published


def test_the_host_addresses_are_the_processors_defaults():
    defaults = {s.env: s.default for s in SETTINGS}
    assert defaults["INPUT_BOOTSTRAP_SERVERS"] == "localhost:29092"
    assert defaults["OUTPUT_BOOTSTRAP_SERVERS"] == "localhost:29093"


def test_zookeeper_and_brokers_have_healthchecks_that_gate_their_dependants():
    for service in ("zookeeper", "kafka-input", "kafka-output"):
        assert SERVICES[service]["healthcheck"]["test"][0] == "CMD"
    assert SERVICES["zookeeper"]["healthcheck"]["test"][1] == "zookeeper-shell"
    assert SERVICES["kafka-input"]["healthcheck"]["test"][1:] == [
        "kafka-broker-api-versions",
        "--bootstrap-server",
        "localhost:9092",
    ]
    for broker in ("kafka-input", "kafka-output"):
        assert SERVICES[broker]["depends_on"] == {"zookeeper": {"condition": "service_healthy"}}
    assert SERVICES["topic-init"]["depends_on"] == {
        "kafka-input": {"condition": "service_healthy"},
        "kafka-output": {"condition": "service_healthy"},
    }


def test_topic_init_creates_every_topic_on_the_right_cluster():
    """Three partitions where the group shares the work; one for the low-volume live-insights topics."""
    script = SERVICES["topic-init"]["command"][0]
    expected = {
        ("kafka-input", "user-login", "3"),
        ("kafka-output", "processed-logins", "3"),
        ("kafka-output", "user-login-dlq", "3"),
        ("kafka-output", "login-insights", "1"),
        ("kafka-output", "login-alerts", "1"),
    }
    found = set(
        re.findall(
            r"kafka-topics --bootstrap-server ([\w-]+):9092 --create --if-not-exists --topic ([\w-]+) "
            r"--partitions (\d) --replication-factor 1\b",
            script,
        )
    )
    assert found == expected
    # The dead letters hold raw personal data: kept a week, as the launcher keeps them (local_kafka.brokers).
    [dlq_line] = [line for line in script.splitlines() if "--topic user-login-dlq" in line]
    assert dlq_line.endswith(f" --config retention.ms={DLQ_RETENTION_MS}")
    assert len(script.strip().splitlines()) == len(expected)
    assert SERVICES["topic-init"]["entrypoint"] == ["bash", "-euc"]  # one failing command fails the service


def test_the_upstream_generator_writes_to_the_input_broker_after_the_topics_exist():
    generator = SERVICES["data-generator"]
    assert image("data-generator")[0] == "mpradeep954/fetch-de-data-gen"
    assert generator["environment"] == {"BOOTSTRAP_SERVERS": "kafka-input:9092", "KAFKA_TOPIC": "user-login"}
    assert generator["restart"] == "on-failure"
    assert generator["depends_on"] == {"topic-init": {"condition": "service_completed_successfully"}}


def test_long_running_services_restart_have_memory_limits_and_named_volumes():
    for name in ("zookeeper", "kafka-input", "kafka-output", "data-generator", "processor"):
        assert SERVICES[name]["restart"] in ("unless-stopped", "on-failure"), name
        assert SERVICES[name]["mem_limit"], name
    assert set(COMPOSE["volumes"]) == {
        "zookeeper-data",
        "zookeeper-log",
        "kafka-input-data",
        "kafka-output-data",
        "prometheus-data",
        "grafana-data",
    }
    assert "kafka-input-data:/var/lib/kafka/data" in SERVICES["kafka-input"]["volumes"]
    assert "kafka-output-data:/var/lib/kafka/data" in SERVICES["kafka-output"]["volumes"]


def test_the_processor_runs_behind_a_profile_on_the_internal_listeners():
    processor = SERVICES["processor"]
    assert processor["profiles"] == ["processor"] and processor["build"] == "."
    env = processor["environment"]
    assert env["INPUT_BOOTSTRAP_SERVERS"] == "kafka-input:9092"
    assert env["OUTPUT_BOOTSTRAP_SERVERS"] == "kafka-output:9092"
    assert set(env) <= {s.env for s in SETTINGS}
    assert "container_name" not in processor  # it must scale to several replicas


def test_the_dockerfile_is_pinned_slim_non_root_and_runtime_only():
    dockerfile = (PROJECT_DIR / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)$", dockerfile, re.M).group(1)
    assert re.match(r"python:\d+\.\d+\.\d+-slim", base)
    assert re.search(r"^USER (?!root)\w+$", dockerfile, re.M)
    assert "requirements-dev" not in dockerfile and "tests" not in dockerfile
    assert 'ENTRYPOINT ["python", "kafka_consumer_processor.py"]' in dockerfile


def compose_spec_schema() -> dict:
    """The Compose Specification's JSON Schema, as vendored by check-jsonschema (requirements-dev.txt)."""
    schemas = resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
    return json.loads((schemas / "compose-spec.json").read_text())


def validator() -> jsonschema.protocols.Validator:
    schema = compose_spec_schema()
    return jsonschema.validators.validator_for(schema)(schema)


def test_the_file_is_valid_against_the_compose_specification():
    errors = sorted(validator().iter_errors(COMPOSE), key=lambda e: list(e.path))
    assert [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors] == []


@pytest.mark.parametrize(
    "mistake",
    [
        {"services": {"kafka-input": {"image": "x", "depends_on": {"zookeeper": {"condition": "healthy"}}}}},
        {"services": {"kafka-input": {"image": "x", "mem_limt": "1g"}}},
        {"services": {"kafka-input": {"image": "x", "healthcheck": {"test": ["CMD", "true"], "retry": 3}}}},
        {"services": {"kafka-input": {"image": "x", "profiles": "processor"}}},
        {"servics": {}},
    ],
)
def test_the_schema_check_catches_what_docker_compose_config_would_refuse(mistake):
    assert list(validator().iter_errors(mistake))


def test_the_compose_processor_requires_the_shared_key_instead_of_a_random_one_per_replica():
    assert SERVICES["processor"]["environment"]["REQUIRE_PII_HASH_KEY"] == "on"
