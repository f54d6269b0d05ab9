"""The processor's Prometheus metrics, in a registry of its own (prometheus_client).

Two kinds, both cheap on the hot path:
- What the run loop measures per batch (never per record): messages consumed, records handed over
  and acknowledged per topic, batch durations, commits, rebalances, lag. prometheus_client objects,
  updated by `PipelineMetrics`.
- What the insights already count per record (outcomes, dead letters by reason, event delay): read
  from them when Prometheus scrapes (`_InsightsCollector`), so nothing is counted twice and the
  figures equal the printed ones.

- With live insights, what the windows and alert rules did (`_LiveCollector`): windows published
  and open, alerts by rule, subjects kept and evicted, records not published.

Labels are bounded: `topic` is "output" or "dlq", `reason` one of login_pipeline.results' reasons,
`partition` one of the input topic's partitions, `rule` one of the four alert rules. No label or
value ever holds input data or a secret.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Callable, NamedTuple, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from login_pipeline.alerts import RULES
from login_pipeline.client import Partition
from login_pipeline.events import (
    CommitAnswered,
    CommitSent,
    Delivered,
    DeliveryFailed,
    HandedOver,
    Observer,
    ProducersReplaced,
    Revoking,
    Stopped,
    TurnEnded,
)
from login_pipeline.insights import Insights
from login_pipeline.live import Live
from login_pipeline.results import ProcessedLogin

PREFIX = "login_processor"
# Batches take milliseconds to seconds; acknowledgements up to the 150 s acknowledgement timeout.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 150.0)
DELAY_BUCKET_STRIDE = 14  # every 14th 5 % bucket of the insights' delay histogram: about x2 apart

# A `_created` sample beside every counter doubles the series and tells nothing the process start does not.
disable_created_metrics()


class BuildInfo(NamedTuple):
    """The processor's engine, group and topics, as login_processor_build_info shows them (never a secret)."""

    engine: str
    consumer_group: str
    input_topic: str
    output_topic: str
    dlq_topic: str


class PipelineMetrics(Observer):
    """Every metric of one processor; `registry` is what /metrics serves."""

    def __init__(
        self,
        build: BuildInfo,
        insights: Callable[[], Insights],  # the newest reading the run loop published
        clock: Callable[[], float] = time.time,
        live: Optional[Live] = None,
    ) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        info = Info(f"{PREFIX}_build", "The processor's engine, group and topics (never a secret).", registry=registry)
        info.info(build._asdict())
        self.consumed = Counter(
            f"{PREFIX}_messages_consumed", "Input messages polled (a retried batch counts again).", registry=registry
        )
        self.produced = Counter(
            f"{PREFIX}_records_produced",
            "Records handed to the output, by topic (output or dlq).",
            ["topic"],
            registry=registry,
        )
        self.acknowledged = Counter(
            f"{PREFIX}_records_acknowledged",
            "Records the output cluster acknowledged (acks=all), by topic (output or dlq).",
            ["topic"],
            registry=registry,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_batches_in_flight", "Batches handed over and not yet acknowledged.", registry=registry
        )
        self.processing = Histogram(
            f"{PREFIX}_batch_processing_seconds",
            "Time to process a polled batch and hand it over.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.acknowledgement = Histogram(
            f"{PREFIX}_batch_acknowledgement_seconds",
            "Time from a batch's hand-over to its acknowledgement by the output cluster.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.commit = Histogram(
            f"{PREFIX}_commit_seconds",
            "Time to send a commit (background commits) or to have it answered (the final one).",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.commit_failures = Counter(f"{PREFIX}_commit_failures", "Commits the group refused.", registry=registry)
        self.delivery_failures = Counter(
            f"{PREFIX}_delivery_failures",
            "Batches the output cluster did not acknowledge (they are retried, never committed).",
            registry=registry,
        )
        self.producer_restarts = Counter(
            f"{PREFIX}_producer_restarts",
            "Producers the output replaced after a fatal error (the batches they held are retried).",
            registry=registry,
        )
        self.rebalances = Counter(f"{PREFIX}_rebalances", "Partition revocations (rebalances).", registry=registry)
        self.assigned_partitions = Gauge(
            f"{PREFIX}_assigned_partitions", "Input partitions held now.", registry=registry
        )
        self.lag = Gauge(
            f"{PREFIX}_consumer_lag_records",
            "Records behind the high watermark, per assigned input partition.",
            ["partition"],
            registry=registry,
        )
        self.last_commit = Gauge(
            f"{PREFIX}_last_commit_timestamp_seconds",
            "Unix time of the last commit the group confirmed.",
            registry=registry,
        )
        self._insights = insights
        Gauge(
            f"{PREFIX}_event_time_lag_seconds",
            "Now minus the newest login timestamp delivered: how far behind event time the output is.",
            registry=registry,
        ).set_function(self._event_time_lag)
        self._lagging: set[int] = set()
        registry.register(_InsightsCollector(insights))
        if live is not None:
            registry.register(_LiveCollector(live))

    def _event_time_lag(self) -> float:
        newest = self._insights().newest_login_ts
        return math.nan if newest is None else self._clock() - newest

    # What the run loop tells (login_pipeline.events), counted per batch, never per record.

    def handed_over(self, event: HandedOver) -> None:
        self.consumed.inc(event.consumed)
        self.processing.observe(event.processing_s)
        self.produced.labels("dlq").inc(event.dead_letters)
        self.produced.labels("output").inc(event.logins)

    def delivered(self, event: Delivered) -> None:
        results = event.batch.results
        logins = sum(1 for result in results if result.__class__ is ProcessedLogin)
        self.acknowledged.labels("output").inc(logins)
        self.acknowledged.labels("dlq").inc(len(results) - logins)
        self.acknowledgement.observe(event.acknowledgement_s)

    def delivery_failed(self, event: DeliveryFailed) -> None:
        self.delivery_failures.inc()

    def producers_replaced(self, event: ProducersReplaced) -> None:
        self.producer_restarts.inc(event.producers)

    def commit_sent(self, event: CommitSent) -> None:
        self.commit.observe(event.duration_s)

    def commit_answered(self, event: CommitAnswered) -> None:
        if event.error is None:
            self.last_commit.set(self._clock())
        else:
            self.commit_failures.inc()

    def revoking(self, event: Revoking) -> None:
        self.rebalances.inc()

    def turn_ended(self, event: TurnEnded) -> None:
        self.in_flight.set(event.in_flight)
        self.assigned_partitions.set(event.assigned)
        self._set_lags(event.lags)

    def stopped(self, event: Stopped) -> None:
        self._set_lags(event.lags)

    def _set_lags(self, lags: Optional[dict[Partition, int]]) -> None:
        """Per-partition lag; partitions no longer held lose their series."""
        current = {partition.partition: lag for partition, lag in (lags or {}).items()}
        for gone in self._lagging - set(current):
            self.lag.remove(str(gone))
        for partition, lag in current.items():
            self.lag.labels(str(partition)).set(lag)
        self._lagging = set(current)


class _InsightsCollector(Collector):
    """Outcomes, dead letters and event delay, read from the insights at scrape time."""

    def __init__(self, insights: Callable[[], Insights]) -> None:
        self._insights = insights

    def collect(self) -> Iterator[Metric]:
        # One published reading: whole batches only, so every figure of a scrape agrees with the others.
        yield from self._read(self._insights())

    @staticmethod
    def _read(insights: Insights) -> list[Metric]:
        families: list[Metric] = []
        outcomes = CounterMetricFamily(
            f"{PREFIX}_messages_processed",
            "Messages whose batch was delivered, by outcome (valid or rejected); once each, however often retried.",
            labels=["outcome"],
        )
        outcomes.add_metric(["valid"], insights.valid)
        outcomes.add_metric(["rejected"], sum(insights.rejected.values()))
        families.append(outcomes)
        families.append(
            CounterMetricFamily(
                f"{PREFIX}_messages_repaired",
                "Valid messages that needed a repair (a default or a fix).",
                insights.repaired,
            )
        )
        dead_letters = CounterMetricFamily(
            f"{PREFIX}_dead_letters", "Messages sent to the dead-letter topic, by reason.", labels=["reason"]
        )
        for reason, count in sorted(insights.rejected.items()):
            dead_letters.add_metric([reason], count)
        families.append(dead_letters)
        buckets = [
            ("+Inf" if math.isinf(bound) else f"{bound:.6g}", count)
            for bound, count in insights.delay.cumulative(DELAY_BUCKET_STRIDE)
        ]
        histogram = HistogramMetricFamily(
            f"{PREFIX}_event_delay_seconds",
            "Processing time minus login time of valid logins (future stamps count as 0).",
        )
        histogram.add_metric([], buckets, insights.delay.sum)
        families.append(histogram)
        families.append(
            GaugeMetricFamily(
                f"{PREFIX}_distinct_users_estimate",
                "Distinct user ids seen, a HyperLogLog estimate (standard error 1.6 %).",
                insights.distinct_users(),
            )
        )
        return families


class _LiveCollector(Collector):
    """Windows and alerts, from the live insights' snapshot at scrape time."""

    def __init__(self, live: Live) -> None:
        self._live = live

    def collect(self) -> Iterator[Metric]:
        snapshot = self._live.snapshot()
        if not snapshot:  # the live insights are gone (their process died): nothing to say
            return
        yield CounterMetricFamily(
            f"{PREFIX}_windows_published",
            "Window records (closed or partial) handed to the insights topic.",
            snapshot["windows_published"],
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_windows_open", "Windows this process holds open.", len(snapshot["open_windows"])
        )
        alerts = CounterMetricFamily(f"{PREFIX}_alerts", "Suspicious-login alerts raised, by rule.", labels=["rule"])
        for rule in RULES:
            alerts.add_metric([rule], snapshot["alerts_raised"].get(rule, 0))
        yield alerts
        yield GaugeMetricFamily(
            f"{PREFIX}_alert_subjects",
            "Subjects (ips, devices, users) the rules keep.",
            snapshot["alert_subjects_kept"],
        )
        yield CounterMetricFamily(
            f"{PREFIX}_alert_subjects_evicted",
            "Subjects dropped from the rules' state while still within their window (ALERT_STATE_KEYS).",
            snapshot["alert_subjects_evicted"],
        )
        yield CounterMetricFamily(
            f"{PREFIX}_live_publish_failures",
            "Window and alert records the output cluster did not take.",
            snapshot["publish_failures"],
        )
