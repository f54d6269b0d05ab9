"""Secured clusters for real: SASL_SSL with SCRAM-SHA-512, TLS from the launcher's CA, and ACLs.

Every way a secured connection can go wrong stops the processor with one line and exit code 1
within FAILURE_BOUND_S, before it commits (or writes) anything; a write refused mid-run stops it
at that batch. No password or private key ever appears in what the processor or the brokers print.
"""

from __future__ import annotations

import json
import stat
import time

import pytest
from kafka import KafkaAdminClient
from kafka.admin import (
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePatternFilter,
    ResourceType,
)

from local_kafka.brokers import PROJECT_DIR, Pair, grant, secure_clusters
from local_kafka.secure import (
    PROCESSOR,
    READER_ONLY,
    USERS,
    Grant,
    Security,
    issue_certificates,
    processor_grants,
    producer_grants,
    reader_grants,
)
from tests.kafka_helpers import (
    Processor,
    Topics,
    caught_up,
    committed_offsets,
    end_offsets,
    produce,
    wait_until,
)

FAILURE_BOUND_S = 30.0
VALID = json.dumps(
    {
        "user_id": "u1",
        "app_version": "2.3.0",
        "device_type": "iOS",
        "ip": "1.2.3.4",
        "locale": "RI",
        "device_id": "d1",
        "timestamp": 1720576825,
    }
).encode()


@pytest.fixture
def secured(secure_kafka) -> Pair:
    return secure_kafka


def secrets_of(pair: Pair) -> list[str]:
    security = pair.input.security
    assert security is not None
    return [security.password(name) for name in (*USERS, "keystore")] + ["PRIVATE KEY"]


def fails_fast(processor: Processor, expected: str) -> str:
    """Run the processor to its exit; assert exit 1 within the bound, one ERROR line containing `expected`."""
    began = time.monotonic()
    with processor:
        code = processor.wait(FAILURE_BOUND_S + 30)
    elapsed = time.monotonic() - began
    errors = [line for line in processor.stderr.splitlines() if " ERROR login_pipeline" in line]
    assert code == 1, processor.stderr[-2000:]
    assert elapsed < FAILURE_BOUND_S, f"took {elapsed:.1f} s"
    assert len(errors) == 1, errors
    assert expected in errors[0], errors[0]
    return errors[0]


def says_authentication_failed(line: str) -> None:
    # The broker's refusal, or (kafka-python, now and then) only its hanging up during authentication.
    assert (
        "SCRAM-SHA-512 authentication failed; check SASL_USERNAME and SASL_PASSWORD" in line
        or "closed the connection during SCRAM-SHA-512 authentication" in line
    ), line


def nothing_happened(pair: Pair, topics: Topics, processor: Processor) -> None:
    """Nothing committed, nothing written, no secret shown."""
    assert set(committed_offsets(pair.input, topics.input, topics.group).values()) <= {None}
    assert sum(end_offsets(pair.output, topics.output).values()) == 0
    assert sum(end_offsets(pair.output, topics.dlq).values()) == 0
    shown = processor.stdout + processor.stderr
    for secret in secrets_of(pair):
        assert secret not in shown


def fed(pair: Pair, acls: bool = True) -> Topics:
    topics = Topics.create(pair, acls=acls)
    produce(pair.input, topics.input, [VALID] * 50)
    return topics


# --- the launcher ---


def test_secrets_are_generated_owner_only_and_never_reach_the_broker_logs(secured):
    security = secured.input.security
    for name in [f"{user}.password" for user in USERS] + ["keystore.password", "broker.p12"]:
        mode = stat.S_IMODE((security.directory / name).stat().st_mode)
        assert mode == 0o600, f"{name} is {oct(mode)}"
    assert security.ca_file.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    for cluster in secured.clusters:
        assert stat.S_IMODE(cluster.config_file.stat().st_mode) == 0o600  # it holds the keystore password
        log = cluster.log_file.read_text(errors="replace")
        for secret in secrets_of(secured):
            assert secret not in log


# --- who may connect ---


def test_a_wrong_password_stops_with_one_line(secured, engine, tmp_path):
    topics = fed(secured)
    processor = Processor(secured, topics, tmp_path, engine=engine, SASL_PASSWORD="not-the-password")
    says_authentication_failed(fails_fast(processor, "user 'processor'"))
    nothing_happened(secured, topics, processor)


def test_an_unknown_user_stops_with_one_line(secured, engine, tmp_path):
    topics = fed(secured)
    processor = Processor(secured, topics, tmp_path, engine=engine, SASL_USERNAME="nobody")
    says_authentication_failed(fails_fast(processor, "user 'nobody'"))
    nothing_happened(secured, topics, processor)


def test_a_ca_that_did_not_sign_the_brokers_stops_with_one_line(secured, engine, tmp_path):
    other_ca, _ = issue_certificates("unused", common_name="some other CA")
    (tmp_path / "other-ca.pem").write_bytes(other_ca)
    topics = fed(secured)
    processor = Processor(secured, topics, tmp_path, engine=engine, SSL_CAFILE=str(tmp_path / "other-ca.pem"))
    fails_fast(processor, f"presented a TLS certificate that SSL_CAFILE={tmp_path / 'other-ca.pem'} did not sign")
    nothing_happened(secured, topics, processor)


def test_plaintext_against_the_tls_listener_stops_with_one_line(secured, engine, tmp_path):
    topics = fed(secured)
    processor = Processor(secured, topics, tmp_path, engine=engine, SECURITY_PROTOCOL="PLAINTEXT")
    line = fails_fast(processor, "SECURITY_PROTOCOL=PLAINTEXT")
    # kafka-python reads the broker's TLS alert; librdkafka only sees the connection closed.
    assert "speaks TLS" in line or "it may expect TLS or SASL" in line
    nothing_happened(secured, topics, processor)


# --- what it may do (ACLs) ---


def test_reader_only_stops_before_consuming_because_it_may_not_write(secured, engine, tmp_path):
    topics = fed(secured, acls=False)
    grant(secured.input, *reader_grants(READER_ONLY, topics.input, group=topics.group))
    grant(secured.output, *reader_grants(READER_ONLY, topics.output, topics.dlq))
    security = secured.input.security
    processor = Processor(
        secured,
        topics,
        tmp_path,
        engine=engine,
        SASL_USERNAME=READER_ONLY,
        SASL_PASSWORD=security.password(READER_ONLY),
    )
    fails_fast(processor, f"user 'reader-only' may not WRITE topic '{topics.output}' on the output cluster")
    nothing_happened(secured, topics, processor)


def test_no_read_acl_on_the_input_topic_stops_with_one_line(secured, engine, tmp_path):
    topics = fed(secured, acls=False)
    grant(
        secured.input,
        Grant(PROCESSOR, "topic", topics.input, "DESCRIBE"),
        Grant(PROCESSOR, "group", topics.group, "READ"),
    )
    grant(secured.output, *topics.output_grants())
    processor = Processor(secured, topics, tmp_path, engine=engine)
    fails_fast(processor, f"user 'processor' may not READ topic '{topics.input}' on the input cluster")
    nothing_happened(secured, topics, processor)


def test_no_group_acl_stops_with_one_line_having_consumed_nothing(secured, engine, tmp_path):
    topics = fed(secured, acls=False)
    grant(secured.input, Grant(PROCESSOR, "topic", topics.input, "READ"))
    grant(secured.output, *topics.output_grants())
    processor = Processor(secured, topics, tmp_path, engine=engine)
    fails_fast(processor, "GROUP_AUTHORIZATION_FAILED" if engine == "confluent-kafka" else "GroupAuthorizationFailed")
    nothing_happened(secured, topics, processor)


@pytest.mark.parametrize("writable", ["output", "dlq"])
def test_no_write_acl_on_one_output_topic_stops_before_consuming(secured, engine, tmp_path, writable):
    topics = fed(secured, acls=False)
    grant(secured.input, *processor_grants(PROCESSOR, topics.input, topics.group))
    allowed, refused = (topics.output, topics.dlq) if writable == "output" else (topics.dlq, topics.output)
    grant(
        secured.output,
        *producer_grants(PROCESSOR, allowed),
        Grant(PROCESSOR, "topic", refused, "DESCRIBE"),
    )
    processor = Processor(secured, topics, tmp_path, engine=engine)
    fails_fast(processor, f"user 'processor' may not WRITE topic '{refused}' on the output cluster")
    nothing_happened(secured, topics, processor)


def test_a_write_acl_withdrawn_mid_run_stops_at_that_batch_with_nothing_committed_past_it(secured, engine, tmp_path):
    topics = fed(secured)
    processor = Processor(secured, topics, tmp_path, engine=engine)
    with processor:
        wait_until(lambda: caught_up(secured, topics), timeout=60, message="caught up before the ACL goes")
        before = committed_offsets(secured.input, topics.input, topics.group)
        with KafkaAdminClient(**secured.output.client_settings()) as admin:
            admin.delete_acls(
                [
                    ACLFilter(
                        principal=f"User:{PROCESSOR}",
                        host="*",
                        operation=ACLOperation.WRITE,
                        permission_type=ACLPermissionType.ALLOW,
                        resource_pattern=ResourcePatternFilter(
                            ResourceType.TOPIC, topics.output, ACLResourcePatternType.LITERAL
                        ),
                    )
                ]
            )
        time.sleep(1)  # the authorizer has the change (single node: applied at once; a margin all the same)
        produce(secured.input, topics.input, [VALID] * 50)
        began = time.monotonic()
        code = processor.wait(FAILURE_BOUND_S + 30)
        elapsed = time.monotonic() - began
    assert code == 1
    assert elapsed < FAILURE_BOUND_S
    errors = [line for line in processor.stderr.splitlines() if " ERROR login_pipeline" in line]
    assert len(errors) == 1 and "the output cluster refused to take the batch" in errors[0], errors
    assert "AUTHORIZATION" in errors[0].upper()
    assert committed_offsets(secured.input, topics.input, topics.group) == before
    assert sum(end_offsets(secured.output, topics.output).values()) == 50
    for secret in secrets_of(secured):
        assert secret not in processor.stdout + processor.stderr


# --- the docs say what the code does ---


def test_the_env_example_secured_block_is_the_launchers_secured_pair_as_the_processor_user(tmp_path):
    lines = (PROJECT_DIR / ".env.example").read_text().splitlines()
    block = dict(line[2:].split("=", 1) for line in lines if line.startswith("# ") and "=" in line.split()[1])
    secure_input, secure_output = secure_clusters()
    security = Security(tmp_path)
    security.ensure()
    assert set(security.processor_environment(PROCESSOR)) <= set(block)
    assert {
        "INPUT_BOOTSTRAP_SERVERS": secure_input.bootstrap,
        "OUTPUT_BOOTSTRAP_SERVERS": secure_output.bootstrap,
        "SECURITY_PROTOCOL": "SASL_SSL",
        "SASL_MECHANISM": "SCRAM-SHA-512",
        "SASL_USERNAME": PROCESSOR,
        "SASL_PASSWORD": "",
        "SSL_CAFILE": ".local/kafka/tls/ca.pem",
    }.items() <= block.items()


def test_the_readme_least_privilege_table_is_what_the_launcher_grants():
    readme = (PROJECT_DIR / "README.md").read_text()
    table = readme[readme.index("**The least the processor needs**") : readme.index("With Kafka's CLI")]
    secure_input, secure_output = secure_clusters()
    for cluster, grants in (("input", secure_input.grants), ("output", secure_output.grants)):
        for g in grants:
            if g.user != PROCESSOR:
                continue
            rows = [row for row in table.splitlines() if row.startswith(f"| {cluster} |") and f"`{g.name}`" in row]
            assert any(f"`{g.operation}`" in row and g.resource in row for row in rows), g
