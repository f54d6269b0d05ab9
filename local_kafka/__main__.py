"""python -m local_kafka ACTION: the local input and output clusters behind the Makefile.

jars    resolve the Kafka jars (once; `make` runs it as part of set-up)
up      start both clusters and create their topics (`make kafka-up`); with --secure, the secured
        pair instead: SASL_SSL with SCRAM-SHA-512 users and ACLs (`make kafka-up-secure`)
down    stop every local cluster, plain and secured; their data stays (`make kafka-down`)
status  say which clusters run
demo    up, a generator in the background, and the processor in the foreground (`make run`);
        Ctrl+C stops the processor, then everything demo started
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time

from local_kafka import brokers
from local_kafka.secure import MECHANISM

DEMO_RATE = 30  # events/s: an insights block every few seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local_kafka", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=("jars", "up", "down", "status", "demo"))
    parser.add_argument("--secure", action="store_true", help="up: the secured pair on 29094 and 29095")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # The launcher reports broker trouble itself; the client's retry chatter during start-up is noise.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    clusters = brokers.secure_clusters() if args.secure else brokers.default_clusters()
    every_cluster = brokers.default_clusters() + brokers.secure_clusters()
    try:
        if args.action == "jars":
            brokers.kafka_classpath()  # KAFKA_HOME's libs are checked without Java; Maven checks for it first
            brokers.java_executable()
        elif args.action == "up":
            up(clusters)
            if args.secure:
                print_secure_settings(clusters)
        elif args.action == "down":
            stopped = [cluster for cluster in every_cluster if brokers.stop(cluster)]
            for cluster in stopped:
                print(f"{_label(cluster)} stopped")
            if not stopped:
                print("no local cluster was running")
        elif args.action == "status":
            for cluster in every_cluster:
                pid = brokers.running_pid(cluster)
                print(f"{_label(cluster)} at {cluster.bootstrap}: {f'running (pid {pid})' if pid else 'stopped'}")
        else:
            return demo(clusters)
    except brokers.SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _label(cluster: brokers.Cluster) -> str:
    return f"{'secured ' if cluster.security else ''}{cluster.name} cluster"


def up(clusters: tuple[brokers.Cluster, ...]) -> list[brokers.Cluster]:
    began = time.monotonic()
    started = brokers.up(clusters)
    for cluster in clusters:
        state = "started" if cluster in started else "already running"
        print(f"{_label(cluster)} {state} at {cluster.bootstrap}, topics: {', '.join(cluster.topics)}")
    print(f"ready in {time.monotonic() - began:.1f} s")
    return started


def print_secure_settings(clusters: tuple[brokers.Cluster, ...]) -> None:
    """How to run the processor against the secured pair; the password is named by its file, never shown."""
    security = clusters[0].security
    assert security is not None
    folder = security.directory.relative_to(brokers.PROJECT_DIR)
    print(
        "run the processor on it as the user 'processor' (its ACLs: README, Security):\n"
        f"  SECURITY_PROTOCOL=SASL_SSL SASL_MECHANISM={MECHANISM} SASL_USERNAME=processor \\\n"
        f'  SASL_PASSWORD="$(cat {folder}/processor.password)" SSL_CAFILE={folder}/ca.pem \\\n'
        f"  INPUT_BOOTSTRAP_SERVERS={clusters[0].bootstrap} OUTPUT_BOOTSTRAP_SERVERS={clusters[1].bootstrap} \\\n"
        "  python kafka_consumer_processor.py\n"
        "and feed it with: python -m local_kafka.generator --secure"
    )


def demo(clusters: tuple[brokers.Cluster, ...]) -> int:
    started = up(clusters)
    generator_log = brokers.STATE_DIR / "generator.log"
    with generator_log.open("ab") as log_output:
        generator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "local_kafka.generator",
                "--rate",
                str(DEMO_RATE),
                "--bootstrap-servers",
                clusters[0].bootstrap,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    print(f"generator sending {DEMO_RATE} events/s to user-login (log: {generator_log}); Ctrl+C stops", flush=True)
    print("live dashboard: http://127.0.0.1:9400/ (its first window closes about a minute in)", flush=True)
    # The processor shares our terminal, so Ctrl+C reaches it directly; we only wait for it to finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        processor = subprocess.Popen(
            [sys.executable, str(brokers.PROJECT_DIR / "kafka_consumer_processor.py")],
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        signal.signal(signal.SIGTERM, lambda *_: processor.terminate())
        exit_code = processor.wait()
    finally:
        generator.terminate()
        try:
            generator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            generator.kill()
            generator.wait()
        brokers.down(tuple(started))
        if started:
            print("stopped the generator and the brokers this run started")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
