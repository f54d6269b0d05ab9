"""Start and stop real single-node Apache Kafka clusters (KRaft, combined broker and controller).

The jars come from ``$KAFKA_HOME/libs`` when KAFKA_HOME points at an unpacked Apache Kafka
distribution, otherwise from Maven Central through ``pom.xml`` beside this file, resolved once into
``.local/kafka-libs`` and reused. Each cluster keeps its data, configuration, log and pid file in
its own folder, so data survives a stop and start, and a stopped launcher can find a running broker.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import ACL, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType
from kafka.admin import ACLOperation as Operation
from kafka.errors import KafkaConfigurationError, KafkaError

from local_kafka.secure import (
    ADMIN,
    PROCESSOR,
    READER_ONLY,
    Grant,
    Security,
    processor_grants,
    producer_grants,
    reader_grants,
)

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
STATE_DIR = PROJECT_DIR / ".local"
LIBS_DIR = STATE_DIR / "kafka-libs"
MAVEN_REPOSITORY = STATE_DIR / "maven"  # what Maven downloads to resolve LIBS_DIR
DATA_DIR = STATE_DIR / "kafka"
POM = PACKAGE_DIR / "pom.xml"

# Two brokers share a 2-core machine with the processor and the tests: small heaps, short GC pauses.
JVM_OPTIONS = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    f"-Dlog4j2.configurationFile={PACKAGE_DIR / 'log4j2.properties'}",
)
MIN_JAVA = 17


def unique_name(prefix: str) -> str:
    """A topic or group name no earlier run used, so tests and benchmarks sharing clusters never meet."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class SetupError(Exception):
    """A prerequisite is missing or a broker failed to start; the message is one line for the user."""


@dataclass(frozen=True)
class Cluster:
    """One single-node KRaft cluster: where it listens, where it keeps its state, which topics it holds."""

    name: str
    port: int
    controller_port: int
    data_dir: Path
    topics: dict[str, int] = field(default_factory=dict)
    security: Security | None = None  # None: PLAINTEXT, open to all
    grants: tuple[Grant, ...] = ()  # ACLs the launcher creates with the topics

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client_settings(self, user: str = ADMIN) -> dict[str, Any]:
        """kafka-python settings that reach this cluster as `user` (the super user by default)."""
        return {"bootstrap_servers": self.bootstrap, **self.security_settings(user)}

    def security_settings(self, user: str = ADMIN) -> dict[str, Any]:
        """kafka-python's security settings for `user`; none for a PLAINTEXT cluster."""
        return self.security.client_settings(user) if self.security else {}

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "logs"

    def server_properties(self) -> str:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.log_dirs),
            "num.partitions": "3",
            # Topics are created on purpose, so a typo in a topic name fails instead of making a new one.
            "auto.create.topics.enable": "false",
            # Single node: every internal topic has one replica; fewer offset partitions start faster.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # A new consumer group forms at once instead of after the default 3 s wait.
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "log.retention.hours": "24",
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        if self.security is not None:
            settings.update(self.security.broker_settings(self.port, self.controller_port))
        return "".join(f"{key}={value}\n" for key, value in settings.items())


@dataclass(frozen=True)
class Pair:
    """The input cluster the processor reads from and the output cluster it writes to."""

    input: Cluster
    output: Cluster

    @property
    def clusters(self) -> tuple[Cluster, Cluster]:
        return (self.input, self.output)


INPUT_TOPIC, OUTPUT_TOPIC, DLQ_TOPIC, GROUP = "user-login", "processed-logins", "user-login-dlq", "login-processor"
INSIGHTS_TOPIC, ALERTS_TOPIC = "login-insights", "login-alerts"
# Dead letters wait for someone to fix a rule and replay them: a week covers a weekend and a release.
# No longer, as they hold the input's raw key and value (personal data) until they are sealed.
DLQ_RETENTION_MS = 7 * 24 * 3600 * 1000
TOPIC_CONFIGS = {DLQ_TOPIC: {"retention.ms": str(DLQ_RETENTION_MS)}}
SECURE_DIR = DATA_DIR / "tls"


def default_clusters(data_dir: Path = DATA_DIR) -> tuple[Cluster, Cluster]:
    """The input and output clusters at the addresses the Docker Compose setup exposes too."""
    return _pair((29092, 29192), (29093, 29193), data_dir)


def secure_clusters(data_dir: Path = DATA_DIR) -> tuple[Cluster, Cluster]:
    """The secured input and output clusters (`up --secure`), with the processor's and reader-only's ACLs."""
    return _pair((29094, 29194), (29095, 29195), data_dir / "secure", Security(data_dir / "tls"))


def ephemeral_clusters(data_dir: Path, security: Security | None = None) -> tuple[Cluster, Cluster]:
    """An input and an output cluster on free ports, for tests."""
    return _pair(tuple(free_ports(2)), tuple(free_ports(2)), data_dir, security)


def _pair(
    input_ports: tuple[int, ...], output_ports: tuple[int, ...], data_dir: Path, security: Security | None = None
) -> tuple[Cluster, Cluster]:
    input_grants: tuple[Grant, ...] = ()
    output_grants: tuple[Grant, ...] = ()
    if security is not None:
        input_grants = processor_grants(PROCESSOR, INPUT_TOPIC, GROUP) + reader_grants(
            READER_ONLY, INPUT_TOPIC, group=GROUP
        )
        output_grants = (
            producer_grants(PROCESSOR, OUTPUT_TOPIC, DLQ_TOPIC, INSIGHTS_TOPIC, ALERTS_TOPIC)
            + reader_grants(PROCESSOR, INSIGHTS_TOPIC, ALERTS_TOPIC)
            + reader_grants(READER_ONLY, OUTPUT_TOPIC, DLQ_TOPIC, INSIGHTS_TOPIC, ALERTS_TOPIC)
        )
    return (
        Cluster("input", *input_ports, data_dir / "input", {INPUT_TOPIC: 3}, security, input_grants),
        Cluster(
            "output",
            *output_ports,
            data_dir / "output",
            {OUTPUT_TOPIC: 3, DLQ_TOPIC: 3, INSIGHTS_TOPIC: 1, ALERTS_TOPIC: 1},
            security,
            output_grants,
        ),
    )


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def java_executable() -> str:
    java = shutil.which("java")
    if java is None:
        raise SetupError(f"java not found on PATH: install Java {MIN_JAVA} or newer")
    version = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    # The first line reads like: openjdk version "17.0.15" 2025-04-15 (or "1.8.0_392" before Java 9).
    quoted = version.split('"')[1] if '"' in version else ""
    number = quoted.split(".")[1] if quoted.startswith("1.") else quoted.split(".")[0].split("-")[0]
    if not number.isascii() or not number.isdigit():
        raise SetupError(f"{java} -version did not say which Java it is; Apache Kafka 4 needs Java {MIN_JAVA} or newer")
    major = int(number)
    if major < MIN_JAVA:
        raise SetupError(f"java {quoted} found; Apache Kafka 4 needs Java {MIN_JAVA} or newer")
    return java


def kafka_classpath() -> str:
    """The broker's classpath: KAFKA_HOME's jars, or Maven's, resolved once per version of pom.xml."""
    home = os.environ.get("KAFKA_HOME")
    if home:
        libs = Path(home) / "libs"
        if not libs.is_dir():
            raise SetupError(f"KAFKA_HOME={home} has no libs folder: point it at an unpacked Apache Kafka")
        return f"{libs}/*"
    stamp = LIBS_DIR / ".pom-sha256"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    if not (stamp.exists() and stamp.read_text() == digest):
        _resolve_with_maven(digest)
    return f"{LIBS_DIR}/*"


def _resolve_with_maven(digest: str) -> None:
    java_executable()  # Maven runs on it: say so, rather than Maven's own complaint
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SetupError("mvn not found on PATH: install Maven, or set KAFKA_HOME to an unpacked Apache Kafka")
    staging = LIBS_DIR.with_name(LIBS_DIR.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    log.info("resolving Apache Kafka jars with Maven (once)")
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
            # Maven's downloads stay in the checkout too, not in ~/.m2: make test writes nothing outside it.
            f"-Dmaven.repo.local={MAVEN_REPOSITORY}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        lines = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
        raise SetupError(f"Maven could not resolve Apache Kafka: {(lines or [f'exit code {result.returncode}'])[0]}")
    (staging / ".pom-sha256").write_text(digest)
    shutil.rmtree(LIBS_DIR, ignore_errors=True)
    staging.rename(LIBS_DIR)


def running_pid(cluster: Cluster) -> int | None:
    """The pid of this cluster's broker if one is running, judged by its pid file and command line."""
    try:
        pid = int(cluster.pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # A recycled pid belongs to some other program; only a broker started on this config counts.
    if b"kafka.Kafka" in cmdline and str(cluster.config_file).encode() in cmdline and _alive(pid):
        return pid
    return None


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False
    except ChildProcessError:
        pass  # not our child: ask the kernel instead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start(cluster: Cluster, java: str, classpath: str) -> bool:
    """Start the broker in the background unless it runs already; True when this call started it."""
    if running_pid(cluster) is not None:
        return False
    cluster.data_dir.mkdir(parents=True, exist_ok=True)
    if cluster.security is not None:
        cluster.security.ensure()
    # Owner-only: a secured cluster's configuration holds its keystore and admin passwords.
    cluster.config_file.touch(mode=0o600)
    cluster.config_file.write_text(cluster.server_properties())
    command = [java, *JVM_OPTIONS, "-cp", classpath]
    if not (cluster.log_dirs / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        users = cluster.security.format_arguments() if cluster.security else []
        # --cluster-id=ID, not "-t ID": a random id may start with "-" and read as an option.
        tool = ["kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(cluster.config_file)]
        # The SCRAM passwords go in a Java argument file (owner-only, removed after), never on the
        # command line, where /proc/PID/cmdline shows them to every local user.
        arguments = cluster.data_dir / "format.args"
        arguments.unlink(missing_ok=True)  # a file left by a killed run keeps its mode: make a new one
        arguments.touch(mode=0o600)
        arguments.write_text("\n".join([*tool, *users]) + "\n")
        try:
            result = subprocess.run([*command, f"@{arguments}"], capture_output=True, text=True, timeout=120)
        finally:
            arguments.unlink()
        if result.returncode != 0:
            error = result.stderr.strip()[-300:]
            raise SetupError(
                f"formatting the {cluster.name} cluster failed: "
                f"{cluster.security.redact(error) if cluster.security else error}"
            )
    with cluster.log_file.open("ab") as log_output:
        process = subprocess.Popen(
            [*command, "kafka.Kafka", str(cluster.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=log_output,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl+C meant for the processor must not kill the broker under it.
            start_new_session=True,
        )
    cluster.pid_file.write_text(str(process.pid))
    # Until the child has exec'd java, its command line is ours and running_pid would not know it.
    deadline = time.monotonic() + 10
    while running_pid(cluster) is None and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return True


def wait_ready(cluster: Cluster, timeout: float = 120.0) -> None:
    """Return once the broker answers a metadata request; raise SetupError if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_pid(cluster) is None:
            raise SetupError(f"the {cluster.name} broker exited during start-up: see {cluster.log_file}")
        try:
            with _admin(cluster, timeout_ms=2000) as admin:
                admin.list_topics()
            return
        except KafkaConfigurationError:
            raise
        except KafkaError:
            time.sleep(0.2)
    raise SetupError(f"the {cluster.name} broker did not answer within {timeout:.0f} s: see {cluster.log_file}")


def ensure_topics(cluster: Cluster) -> None:
    """Create the cluster's topics that do not exist yet (existing ones are left as they are), and its ACLs."""
    with _admin(cluster, timeout_ms=10000) as admin:
        existing = set(admin.list_topics())
    for name, partitions in cluster.topics.items():
        if name not in existing:
            create_topics(cluster, partitions, name, configs=TOPIC_CONFIGS.get(name))
    if cluster.grants:
        grant(cluster, *cluster.grants)


def create_topics(cluster: Cluster, partitions: int, *names: str, configs: dict[str, str] | None = None) -> None:
    """Create single-replica topics and wait until every partition has a leader."""
    with _admin(cluster, timeout_ms=30000) as admin:
        admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": 1, "configs": configs or {}} for name in names},
            timeout_ms=30000,
            wait_for_metadata=True,
        )


def stop(cluster: Cluster, timeout: float = 60.0) -> bool:
    """Stop the broker (SIGTERM, then SIGKILL after timeout); True when one was running."""
    pid = running_pid(cluster)
    if pid is None:
        cluster.pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            log.warning("the %s broker ignored SIGTERM for %.0f s; killing it", cluster.name, timeout)
            os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.1)
    cluster.pid_file.unlink(missing_ok=True)
    return True


def grant(cluster: Cluster, *grants: Grant) -> None:
    """Create ACLs (creating one that exists changes nothing)."""
    acls = [
        ACL(
            principal=f"User:{g.user}",
            host="*",
            operation=Operation[g.operation],
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(ResourceType[g.resource.upper()], g.name, ACLResourcePatternType.LITERAL),
        )
        for g in grants
    ]
    with _admin(cluster, timeout_ms=30000) as admin:
        result = admin.create_acls(acls)
    if result["failed"]:
        raise SetupError(f"creating ACLs on the {cluster.name} cluster failed: {result['failed'][0].__name__}")


def _admin(cluster: Cluster, timeout_ms: int) -> KafkaAdminClient:
    return KafkaAdminClient(
        **cluster.client_settings(),
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
        client_id="local-kafka",
    )


def up(clusters: tuple[Cluster, ...], timeout: float = 120.0) -> list[Cluster]:
    """Start every cluster not yet running, wait until all answer, create their topics.

    Returns the clusters this call started, so a caller stops only what it started. Brokers are
    started together and waited for after, so two JVMs warm up side by side.
    """
    java, classpath = java_executable(), kafka_classpath()
    started = [cluster for cluster in clusters if start(cluster, java, classpath)]
    try:
        for cluster in clusters:
            wait_ready(cluster, timeout)
            ensure_topics(cluster)
    except BaseException:
        for cluster in started:
            stop(cluster)
        raise
    return started


def down(clusters: tuple[Cluster, ...]) -> None:
    for cluster in clusters:
        stop(cluster)
