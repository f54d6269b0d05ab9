"""The local Kafka launcher: real brokers start, hold their topics, keep data across restarts, stop."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from local_kafka import brokers
from tests.kafka_helpers import partition_counts, produce, read_all


def test_both_clusters_answer_and_hold_their_topics_with_three_partitions(kafka):
    assert partition_counts(kafka.input).items() >= {"user-login": 3}.items()
    assert partition_counts(kafka.output).items() >= {"processed-logins": 3, "user-login-dlq": 3}.items()


def test_the_dead_letter_topic_keeps_a_week_and_no_longer(kafka):
    from kafka.admin import ConfigResource, ConfigResourceType

    from local_kafka.brokers import DLQ_RETENTION_MS, DLQ_TOPIC, _admin

    with _admin(kafka.output, timeout_ms=10000) as admin:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, DLQ_TOPIC)])
    [configs] = [topics[DLQ_TOPIC] for topics in described.values()]
    assert configs["retention.ms"]["value"] == str(DLQ_RETENTION_MS) == str(7 * 24 * 3600 * 1000)


def test_the_clusters_are_independent(kafka):
    assert "processed-logins" not in partition_counts(kafka.input)
    assert "user-login" not in partition_counts(kafka.output)


@pytest.mark.kafka
def test_a_restart_keeps_data_and_a_stop_leaves_no_process(tmp_path):
    (cluster,) = [brokers.Cluster("restart", *brokers.free_ports(2), tmp_path / "restart", {"kept": 1})]
    brokers.up((cluster,))
    try:
        produce(cluster, "kept", [b"one", b"two", b"three"])
        pid = brokers.running_pid(cluster)
        assert brokers.stop(cluster)
        assert brokers.running_pid(cluster) is None
        assert not os.path.exists(f"/proc/{pid}")

        assert brokers.up((cluster,)) == [cluster]
        assert [record.value for record in read_all(cluster, "kept")] == [b"one", b"two", b"three"]
    finally:
        brokers.down((cluster,))
    assert brokers.running_pid(cluster) is None


def test_up_is_idempotent_and_starts_nothing_already_running(kafka):
    assert brokers.up(kafka.clusters) == []


def test_a_missing_java_stops_with_one_clear_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "local_kafka", "jars"],
        env={**os.environ, "PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: java not found on PATH: install Java 17 or newer"]


def test_a_kafka_home_without_libs_stops_with_one_clear_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "local_kafka", "jars"],
        env={**os.environ, "KAFKA_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "has no libs folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_java_that_does_not_say_its_version_is_named_in_one_clear_line(tmp_path, monkeypatch):
    stub = tmp_path / "java"
    stub.write_text("#!/bin/sh\necho 'no version here' >&2\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(brokers.SetupError, match="did not say which Java it is; Apache Kafka 4 needs Java 17"):
        brokers.java_executable()


def test_the_scram_passwords_reach_the_storage_tool_in_an_owner_only_file_never_its_command_line(tmp_path, monkeypatch):
    import stat

    from local_kafka.secure import USERS, Security

    security = Security(tmp_path / "tls")
    security.ensure()
    cluster = brokers.Cluster("input", 1, 2, tmp_path / "input", security=security)
    seen = {}

    def formatting(command, **kwargs):
        [argument_file] = [argument[1:] for argument in command if argument.startswith("@")]
        seen.update(
            command=command,
            mode=stat.S_IMODE(os.stat(argument_file).st_mode),
            arguments=open(argument_file).read(),
            file=argument_file,
        )
        return subprocess.CompletedProcess(command, 1, "", "stopped here by the test")

    monkeypatch.setattr(brokers.subprocess, "run", formatting)
    with pytest.raises(brokers.SetupError):
        brokers.start(cluster, "java", "classpath")
    passwords = [security.password(user) for user in USERS]
    assert not [argument for argument in seen["command"] for password in passwords if password in argument]
    assert seen["mode"] == 0o600 and all(password in seen["arguments"] for password in passwords)
    assert "kafka.tools.StorageTool" in seen["arguments"]
    assert not os.path.exists(seen["file"])  # removed once the tool ran


def test_maven_keeps_its_downloads_in_the_checkout_not_the_home_directory(tmp_path, monkeypatch):
    commands = []

    def maven(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 1, "", "[ERROR] stopped here by the test")

    monkeypatch.setattr(brokers.subprocess, "run", maven)
    monkeypatch.setattr(brokers, "java_executable", lambda: "java")
    monkeypatch.setattr(brokers.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(brokers, "LIBS_DIR", tmp_path / "kafka-libs")
    with pytest.raises(brokers.SetupError, match="stopped here by the test"):
        brokers._resolve_with_maven("digest")
    [command] = commands
    [repository] = [argument.split("=", 1)[1] for argument in command if argument.startswith("-Dmaven.repo.local=")]
    assert Path(repository).is_relative_to(brokers.PROJECT_DIR)
