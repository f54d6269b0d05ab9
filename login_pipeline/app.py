"""Wiring: builds the engine, the run loop, its observers and the HTTP server from the config, runs,
and maps the outcome to an exit code. Nothing here runs per record."""

from __future__ import annotations

import logging
import sys
import time
from functools import partial
from typing import Any, Callable, NamedTuple, Optional, TextIO

from login_pipeline import engines, gc_tuning, web
from login_pipeline.checkpoint import GroupCommits
from login_pipeline.client import Input, Output, StartupError
from login_pipeline.config import Config
from login_pipeline.events import Observer, Observers
from login_pipeline.health import Health
from login_pipeline.live import Live, LiveSettings
from login_pipeline.live_observer import LiveObserver
from login_pipeline.live_process import LiveProcess
from login_pipeline.metrics import BuildInfo, PipelineMetrics
from login_pipeline.processing import Process
from login_pipeline.run_loop import LoopSettings, RunLoop
from login_pipeline.running_insights import RunningInsights
from login_pipeline.status_server import serving
from login_pipeline.stop import StopRequest
from login_pipeline.timeouts import REVOKE_SETTLE_S

log = logging.getLogger(__name__)


class Pipeline(NamedTuple):
    """The run loop and what listens to it."""

    loop: RunLoop
    running: RunningInsights
    metrics: PipelineMetrics
    health: Health
    live: Optional[Live]

    def run(self) -> int:
        """Run the loop; the live insights close after it, once the input's last revoke has flushed them."""
        try:
            return self.loop.run()
        finally:
            if self.live is not None:
                self.live.close()

    def this_instance(self) -> dict[str, Any]:
        """This instance's part of /api/insights: running totals and live windows. Called from HTTP threads."""
        return {"running_totals": self.running.snapshot(), **(self.live.snapshot() if self.live is not None else {})}


def assemble(
    config: Config,
    process: Process,
    consumer: Input,
    output: Output,
    stop: StopRequest,
    out: TextIO = sys.stdout,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    live: Optional[Live] = None,
    revoke_settle_s: float = REVOKE_SETTLE_S,
) -> Pipeline:
    running = RunningInsights(config.insights_every, out)
    metrics = PipelineMetrics(build_info(config), lambda: running.published, clock, live)
    health = Health(config.liveness_timeout_s, output.alive, lambda: stop.requested, monotonic)
    listeners: list[Observer] = [metrics, running, health]
    if live is not None:
        listeners.append(LiveObserver(live))
    observers = Observers(*listeners)
    loop = RunLoop(
        LoopSettings(config.output_topic, revoke_settle_s),
        process,
        consumer,
        output,
        GroupCommits(consumer, observers, monotonic),
        observers,
        stop,
        clock,
        monotonic,
    )
    return Pipeline(loop, running, metrics, health, live)


def build_info(config: Config) -> BuildInfo:
    return BuildInfo(
        config.kafka_client, config.consumer_group, config.input_topic, config.output_topic, config.dlq_topic
    )


def live_settings(config: Config) -> LiveSettings:
    return LiveSettings(config.insights_topic, config.alerts_topic, config.windows, config.alerts)


def main(config: Config, process: Process, pseudonymize: Callable[[str], str], users_key: bytes = b"") -> int:
    """Run the pipeline with signal handling and its HTTP server; startup problems: one line, exit 1.

    `pseudonymize` hashes a user id for the alerts, and `users_key` keys the published distinct-user
    sketches, both derived from the key that hashes ip and device_id.
    """
    stop = StopRequest()
    stop.install()
    try:
        consumer, output = engines.connect(config)
    except StartupError as error:
        log.error("%s", error)
        return 1
    live: Optional[LiveProcess] = None
    if config.live_insights:
        # The group's view is read back only for the HTTP server to show, in the live insights' process.
        feed = partial(engines.live_feed, config) if config.metrics_port else None
        try:
            live = LiveProcess(
                live_settings(config),
                config.log_format,
                pseudonymize,
                partial(engines.live_publisher, config),
                feed,
                users_key,
            )
        except StartupError as error:
            log.error("%s", error)
            consumer.close()  # the consumer (not yet subscribed), and the output process it started
            output.close()
            return 1
    pipeline = assemble(config, process, consumer, output, stop, live=live)
    log.info(
        "consuming %s from %s as group %s; output %s, dead letters %s on %s",
        config.input_topic,
        ",".join(config.input_bootstrap_servers),
        config.consumer_group,
        config.output_topic,
        config.dlq_topic,
        ",".join(config.output_bootstrap_servers),
    )
    gc_tuning.freeze_startup_objects()
    pages = web.pages(pipeline.this_instance, live.group) if live is not None and config.metrics_port else {}
    with serving(
        config.metrics_host,
        config.metrics_port,
        pipeline.metrics.registry,
        pipeline.health.liveness,
        pipeline.health.readiness,
        lambda: engines.probes(config),
        pages,
        config.http_allowed_hosts,
        config.http_token,
        config.probe_port,
    ):
        return pipeline.run()
