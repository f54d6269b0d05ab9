"""The processor's configuration: environment and `.env` (python-dotenv), overridden by CLI flags.

Everything is validated here, before any connection is made: a bad value stops the program with
one line naming the setting (exit code 2).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

from dotenv import load_dotenv

from login_pipeline.alerts import AlertSettings, RuleSettings

KAFKA_PYTHON = "kafka-python"
KAFKA_CLIENTS = (KAFKA_PYTHON, "confluent-kafka")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
MIN_PII_KEY_BYTES = 16
# Kafka's own rule for topic names (and, here, for consumer group names too).
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_SERVER = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$")
# ASCII digits only: str.isdigit() and int() also take "²" and "２０", which no one means as a number.
_WHOLE_NUMBER = re.compile(r"^[0-9]{1,12}$")
MAX_BATCH_SIZE = 100_000  # a batch is held in memory twice (polled and in flight): keep it sane
MAX_INSIGHTS_EVERY = 1_000_000_000
SHOWN_VALUE_CHARS = 60  # a bad value is quoted in the error line up to this length
LOG_FORMATS = ("text", "json")
# The run loop's longest legitimate wait is an acknowledgement (150 s); longer than that, it is stuck.
DEFAULT_LIVENESS_TIMEOUT_S = 180
MAX_LIVENESS_TIMEOUT_S = 86_400
_HOST = re.compile(r"^([0-9A-Za-z.-]{1,253}|[0-9A-Fa-f:.]{2,45})$")


ON_OFF = ("on", "off")
MAX_WINDOW_S = 86_400
MAX_ALERT_WINDOW_S = 7 * 86_400
MAX_ALERT_THRESHOLD = 10_000
MAX_STATE_KEYS = 10_000_000


@dataclass(frozen=True)
class WindowSettings:
    size_s: int
    grace_s: int
    idle_s: int


class ConfigError(ValueError):
    """A setting is missing or invalid; str() is the one line shown to the user."""


@dataclass(frozen=True)
class Setting:
    env: str
    default: str | None
    help: str
    secret: bool = False


SETTINGS = (
    Setting("INPUT_BOOTSTRAP_SERVERS", "localhost:29092", "input cluster, host:port[,host:port...]"),
    Setting("OUTPUT_BOOTSTRAP_SERVERS", "localhost:29093", "output cluster, host:port[,host:port...]"),
    Setting("INPUT_TOPIC", "user-login", "topic to consume login events from"),
    Setting("OUTPUT_TOPIC", "processed-logins", "topic for processed events (output cluster)"),
    Setting("DLQ_TOPIC", "user-login-dlq", "dead-letter topic for rejected events (output cluster)"),
    Setting("CONSUMER_GROUP", "login-processor", "consumer group; processes in one group share partitions"),
    Setting(
        "PII_HASH_KEY",
        None,
        f"HMAC-SHA-256 key for ip and device_id, at least {MIN_PII_KEY_BYTES} bytes; "
        "unset: a random key per process (hashes then differ between runs)",
        secret=True,
    ),
    Setting("INSIGHTS_EVERY", "100", "print insights every N messages"),
    Setting("BATCH_SIZE", "2000", "most records polled, produced and committed as one batch"),
    Setting(
        "KAFKA_CLIENT",
        KAFKA_PYTHON,
        f"client library: {' or '.join(KAFKA_CLIENTS)} (librdkafka; pip install -r requirements-confluent.txt)",
    ),
    Setting("SECURITY_PROTOCOL", "PLAINTEXT", f"both clusters: one of {', '.join(SECURITY_PROTOCOLS)}"),
    Setting("SASL_MECHANISM", None, f"with SASL_*: one of {', '.join(SASL_MECHANISMS)}"),
    Setting("SASL_USERNAME", None, "with SASL_*: user name"),
    Setting("SASL_PASSWORD", None, "with SASL_*: password", secret=True),
    Setting("SSL_CAFILE", None, "with SSL or SASL_SSL: CA certificate file (PEM) to verify the brokers"),
    Setting("METRICS_PORT", "9400", "port of /metrics, /livez and /readyz; 0 turns them off"),
    Setting("METRICS_HOST", "127.0.0.1", "address they listen on (0.0.0.0 in a container)"),
    Setting(
        "LIVENESS_TIMEOUT_S",
        str(DEFAULT_LIVENESS_TIMEOUT_S),
        "seconds the run loop may go without coming round before /livez answers 503",
    ),
    Setting("LOG_FORMAT", "text", f"logs on stderr: {' or '.join(LOG_FORMATS)} (one JSON object per line)"),
    Setting("LIVE_INSIGHTS", "on", "windows, alerts, /api and the dashboard: on or off"),
    Setting("INSIGHTS_TOPIC", "login-insights", "topic for closed windows' summaries (output cluster)"),
    Setting("ALERTS_TOPIC", "login-alerts", "topic for suspicious-login alerts (output cluster)"),
    Setting("WINDOW_SIZE_S", "60", "length of the event-time tumbling windows, seconds"),
    Setting("WINDOW_GRACE_S", "10", "how long past its end a window still takes late events, seconds (0: none)"),
    Setting("WINDOW_IDLE_S", "30", "with no input for this long, windows past end + grace close by wall clock"),
    *(
        Setting(env, str(default), help)
        for env, default, help in (
            ("ALERT_STUFFING_USERS", 15, "credential stuffing: distinct users from one ip ..."),
            ("ALERT_STUFFING_WINDOW_S", 900, "... within this many seconds"),
            ("ALERT_LOCALES", 3, "locale hopping: distinct locales of one user ..."),
            ("ALERT_LOCALES_WINDOW_S", 10_800, "... within this many seconds"),
            ("ALERT_DEVICE_USERS", 10, "shared device: distinct users of one device ..."),
            ("ALERT_DEVICE_WINDOW_S", 3_600, "... within this many seconds"),
            ("ALERT_BURST_LOGINS", 20, "login burst: logins of one user ..."),
            ("ALERT_BURST_WINDOW_S", 60, "... within this many seconds"),
            ("ALERT_STATE_KEYS", 50_000, "ips, devices or users each rule remembers; least recent go first"),
        )
    ),
)


@dataclass(frozen=True)
class Config:
    input_bootstrap_servers: tuple[str, ...]
    output_bootstrap_servers: tuple[str, ...]
    input_topic: str
    output_topic: str
    dlq_topic: str
    consumer_group: str
    pii_hash_key: bytes | None
    insights_every: int
    batch_size: int
    kafka_client: str
    security_protocol: str
    sasl_mechanism: str | None
    sasl_username: str | None
    sasl_password: str | None
    ssl_cafile: str | None
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    liveness_timeout_s: int = DEFAULT_LIVENESS_TIMEOUT_S
    log_format: str = "text"
    live_insights: bool = False
    insights_topic: str = "login-insights"
    alerts_topic: str = "login-alerts"
    windows: WindowSettings = WindowSettings(60, 10, 30)
    alerts: AlertSettings = AlertSettings()

    def __repr__(self) -> str:  # secrets stay out of logs and tracebacks
        shown = {
            f.name: (
                "***"
                if f.name in ("pii_hash_key", "sasl_password") and getattr(self, f.name)
                else getattr(self, f.name)
            )
            for f in fields(self)
        }
        return f"Config({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


def argument_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Each flag overrides the environment variable of the same name, which overrides .env.",
    )
    for setting in SETTINGS:
        default = "unset" if setting.default is None else setting.default
        parser.add_argument(
            f"--{setting.env.lower().replace('_', '-')}",
            dest=setting.env,
            metavar="VALUE",
            help=f"{setting.help} [env {setting.env}, default {'hidden' if setting.secret else default}]",
        )
    parser.add_argument("--env-file", default=".env", metavar="PATH", help="dotenv file to read (default .env)")
    return parser


def load(argv: list[str] | None, description: str, environ: dict[str, str] | None = None) -> Config:
    """Parse flags, read the dotenv file into the environment (never over it), validate everything."""
    args = argument_parser(description).parse_args(argv)
    if environ is None:
        load_dotenv(Path(args.env_file), override=False)
        environ = dict(os.environ)
    raw = {s.env: _pick(getattr(args, s.env), environ.get(s.env), s.default) for s in SETTINGS}
    return validate(raw)


def _pick(flag: str | None, env: str | None, default: str | None) -> str | None:
    for value in (flag, env):
        if value is not None and value.strip() != "":
            return value.strip()
    return default


def validate(raw: dict[str, str | None]) -> Config:
    text = {name: value for name, value in raw.items() if value is not None}  # every setting with a default
    protocol = _ascii_upper(text["SECURITY_PROTOCOL"])
    if protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(
            f"SECURITY_PROTOCOL={_shown(text['SECURITY_PROTOCOL'])} is not one of {', '.join(SECURITY_PROTOCOLS)}"
        )
    mechanism = _ascii_upper(raw["SASL_MECHANISM"]) if raw["SASL_MECHANISM"] else None
    if protocol.startswith("SASL"):
        if mechanism not in SASL_MECHANISMS:
            raise ConfigError(f"SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)} with {protocol}")
        for name in ("SASL_USERNAME", "SASL_PASSWORD"):
            if not raw[name]:
                raise ConfigError(f"{name} is required with SECURITY_PROTOCOL={protocol}")
    client = _one_of("KAFKA_CLIENT", text["KAFKA_CLIENT"], KAFKA_CLIENTS)
    if raw["SSL_CAFILE"] and not Path(raw["SSL_CAFILE"]).is_file():
        raise ConfigError(f"SSL_CAFILE={_shown(raw['SSL_CAFILE'])} is not a readable file")

    names = ("INPUT_TOPIC", "OUTPUT_TOPIC", "DLQ_TOPIC", "INSIGHTS_TOPIC", "ALERTS_TOPIC", "CONSUMER_GROUP")
    topics = {name: text[name] for name in names}
    for name, value in topics.items():
        if not _TOPIC.match(value):
            raise ConfigError(f"{name}={_shown(value)} must be 1-249 letters, digits, '.', '_' or '-'")
    written = ("OUTPUT_TOPIC", "DLQ_TOPIC", "INSIGHTS_TOPIC", "ALERTS_TOPIC")
    for index, name in enumerate(written):
        for other in written[index + 1 :]:
            if topics[name] == topics[other]:
                raise ConfigError(f"{name} and {other} must differ, or one kind of record would pass for another")

    key = raw["PII_HASH_KEY"]
    if key is not None and len(key.encode()) < MIN_PII_KEY_BYTES:
        raise ConfigError(
            f"PII_HASH_KEY must be at least {MIN_PII_KEY_BYTES} bytes; "
            "generate one with: python -c 'import secrets; print(secrets.token_hex(32))'"
        )

    return Config(
        input_bootstrap_servers=_servers("INPUT_BOOTSTRAP_SERVERS", text["INPUT_BOOTSTRAP_SERVERS"]),
        output_bootstrap_servers=_servers("OUTPUT_BOOTSTRAP_SERVERS", text["OUTPUT_BOOTSTRAP_SERVERS"]),
        input_topic=topics["INPUT_TOPIC"],
        output_topic=topics["OUTPUT_TOPIC"],
        dlq_topic=topics["DLQ_TOPIC"],
        consumer_group=topics["CONSUMER_GROUP"],
        pii_hash_key=key.encode() if key is not None else None,
        insights_every=_whole_number("INSIGHTS_EVERY", text["INSIGHTS_EVERY"], MAX_INSIGHTS_EVERY),
        batch_size=_whole_number("BATCH_SIZE", text["BATCH_SIZE"], MAX_BATCH_SIZE),
        kafka_client=client,
        security_protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username=raw["SASL_USERNAME"],
        sasl_password=raw["SASL_PASSWORD"],
        ssl_cafile=raw["SSL_CAFILE"],
        metrics_port=_port(text["METRICS_PORT"]),
        metrics_host=_host(text["METRICS_HOST"]),
        liveness_timeout_s=_whole_number("LIVENESS_TIMEOUT_S", text["LIVENESS_TIMEOUT_S"], MAX_LIVENESS_TIMEOUT_S),
        log_format=_one_of("LOG_FORMAT", text["LOG_FORMAT"], LOG_FORMATS),
        live_insights=_one_of("LIVE_INSIGHTS", text["LIVE_INSIGHTS"], ON_OFF) == "on",
        insights_topic=topics["INSIGHTS_TOPIC"],
        alerts_topic=topics["ALERTS_TOPIC"],
        windows=WindowSettings(
            _whole_number("WINDOW_SIZE_S", text["WINDOW_SIZE_S"], MAX_WINDOW_S),
            _whole_number("WINDOW_GRACE_S", text["WINDOW_GRACE_S"], MAX_WINDOW_S, minimum=0),
            _whole_number("WINDOW_IDLE_S", text["WINDOW_IDLE_S"], MAX_WINDOW_S),
        ),
        alerts=AlertSettings(
            credential_stuffing=_rule(text, "STUFFING_USERS", "STUFFING_WINDOW_S"),
            locale_hopping=_rule(text, "LOCALES", "LOCALES_WINDOW_S"),
            shared_device=_rule(text, "DEVICE_USERS", "DEVICE_WINDOW_S"),
            login_burst=_rule(text, "BURST_LOGINS", "BURST_WINDOW_S"),
            capacity=_whole_number("ALERT_STATE_KEYS", text["ALERT_STATE_KEYS"], MAX_STATE_KEYS),
        ),
    )


def _rule(text: dict[str, str], threshold: str, window: str) -> RuleSettings:
    """A rule's threshold (2 at least: 1 would flag every login) and window, from ALERT_<name> settings."""
    return RuleSettings(
        _whole_number(f"ALERT_{threshold}", text[f"ALERT_{threshold}"], MAX_ALERT_THRESHOLD, minimum=2),
        _whole_number(f"ALERT_{window}", text[f"ALERT_{window}"], MAX_ALERT_WINDOW_S),
    )


def _servers(name: str, value: str) -> tuple[str, ...]:
    servers = tuple(part.strip() for part in value.split(","))
    for server in servers:
        match = _SERVER.match(server)
        if not match or not 0 < int(match.group(2)) < 65536:
            raise ConfigError(f"{name}={_shown(value)}: {_shown(server)} is not host:port")
    return servers


def _whole_number(name: str, value: str, maximum: int, minimum: int = 1) -> int:
    if not _WHOLE_NUMBER.match(value) or not minimum <= int(value) <= maximum:
        raise ConfigError(f"{name}={_shown(value)} must be a whole number from {minimum} to {maximum:,}")
    return int(value)


def _port(value: str) -> int:
    if not _WHOLE_NUMBER.match(value) or int(value) > 65535:
        raise ConfigError(f"METRICS_PORT={_shown(value)} must be a port number from 0 (off) to 65535")
    return int(value)


def _host(value: str) -> str:
    if not _HOST.match(value):
        raise ConfigError(f"METRICS_HOST={_shown(value)} is not a host name or an IP address")
    return value


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> str:
    """`value` folded to lower case (ASCII only, as _ascii_upper) if it is one of `choices`."""
    folded = value.lower() if value.isascii() else value
    if folded not in choices:
        raise ConfigError(f"{name}={_shown(value)} is not one of {', '.join(choices)}")
    return folded


def _ascii_upper(value: str) -> str:
    # Unicode case mapping would turn "ſasl_ssl" into "SASL_SSL"; only ASCII spellings are accepted.
    return value.upper() if value.isascii() else value


def _shown(value: str) -> str:
    """A value as quoted in an error line: repr (control characters escaped), cut to a readable length."""
    if len(value) > SHOWN_VALUE_CHARS:
        return repr(value[:SHOWN_VALUE_CHARS]) + f"... ({len(value):,} characters)"
    return repr(value)
