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
from typing import Any, Callable, NoReturn, get_type_hints

from dotenv import load_dotenv

from login_pipeline.alerts import AlertSettings
from login_pipeline.windows import WindowSettings

KAFKA_PYTHON = "kafka-python"
KAFKA_CLIENTS = (KAFKA_PYTHON, "confluent-kafka")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
MIN_PII_KEY_BYTES = 16
MIN_HTTP_TOKEN_CHARS = 32  # secrets.token_urlsafe(32) gives 43
MAX_HTTP_TOKEN_CHARS = 512  # it must fit in the 8 KiB of headers the HTTP server reads
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
_TOKEN68 = re.compile(r"^[A-Za-z0-9._~+/-]+=*\Z")
_HOST = re.compile(r"^([0-9A-Za-z.-]{1,253}|[0-9A-Fa-f:.]{2,45})$")


ON_OFF = ("on", "off")
MAX_WINDOW_S = 86_400
MAX_ALERT_WINDOW_S = 7 * 86_400
MAX_ALERT_THRESHOLD = 10_000
MAX_STATE_KEYS = 10_000_000


class ConfigError(ValueError):
    """A setting is missing or invalid; str() is the one line shown to the user."""


Parser = Callable[[str, str], Any]  # (the setting's name, its text) -> its value; ConfigError if invalid


@dataclass(frozen=True)
class Setting:
    """One setting, declared once: everything else (the flags, `--help`, the Config record and its
    defaults) is derived from SETTINGS. `field` is where its value goes in Config, dotted into the
    records it holds (default: the name in lower case)."""

    env: str
    default: str | None  # None: unset unless given
    help: str
    parse: Parser
    secret: bool = False
    field: str = ""

    @property
    def path(self) -> str:
        return self.field or self.env.lower()


def _whole_number(minimum: int, maximum: int) -> Parser:
    def parse(name: str, value: str) -> int:
        if not _WHOLE_NUMBER.match(value) or not minimum <= int(value) <= maximum:
            raise ConfigError(f"{name}={_shown(value)} must be a whole number from {minimum} to {maximum:,}")
        return int(value)

    return parse


def _one_of(choices: tuple[str, ...], fold=str.lower) -> Parser:
    """`value` folded (ASCII only: Unicode case mapping turns "ſasl_ssl" into "SASL_SSL") if it is one of `choices`."""

    def parse(name: str, value: str) -> str:
        folded = fold(value) if value.isascii() else value
        if folded not in choices:
            raise ConfigError(f"{name}={_shown(value)} is not one of {', '.join(choices)}")
        return folded

    return parse


def _on_off(name: str, value: str) -> bool:
    return _one_of(ON_OFF)(name, value) == "on"


def _servers(name: str, value: str) -> tuple[str, ...]:
    servers = tuple(part.strip() for part in value.split(","))
    for server in servers:
        match = _SERVER.match(server)
        if not match or not 0 < int(match.group(2)) < 65536:
            raise ConfigError(f"{name}={_shown(value)}: {_shown(server)} is not host:port")
    return servers


def _name(name: str, value: str) -> str:
    if not _TOPIC.match(value):
        raise ConfigError(f"{name}={_shown(value)} must be 1-249 letters, digits, '.', '_' or '-'")
    return value


def _pii_key(name: str, value: str) -> bytes:
    if len(value.encode()) < MIN_PII_KEY_BYTES:
        raise ConfigError(
            f"{name} must be at least {MIN_PII_KEY_BYTES} bytes; "
            "generate one with: python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return value.encode()


def _text(_name: str, value: str) -> str:
    return value


def _ascii_upper(_name: str, value: str) -> str:
    # Unicode case mapping would turn "ſcram-sha-512" into "SCRAM-SHA-512"; only ASCII spellings are accepted.
    return value.upper() if value.isascii() else value


def _file(name: str, value: str) -> str:
    if not Path(value).is_file():
        raise ConfigError(f"{name}={_shown(value)} is not a readable file")
    return value


def _port(name: str, value: str) -> int:
    if not _WHOLE_NUMBER.match(value) or int(value) > 65535:
        raise ConfigError(f"{name}={_shown(value)} must be a port number from 0 (off) to 65535")
    return int(value)


def _host_names(name: str, value: str) -> tuple[str, ...]:
    names = tuple(part.strip().lower() for part in value.split(","))
    for host in names:
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1], as in a Host header
        if host != "*" and not _HOST.match(bare):
            raise ConfigError(f"{name}={_shown(value)}: {_shown(host)} is not a host name, an IP address or *")
    return names


def _http_token(name: str, value: str) -> str:
    # RFC 6750's token68 characters only: it travels in a header, and a browser's Basic prompt takes it.
    if not MIN_HTTP_TOKEN_CHARS <= len(value) <= MAX_HTTP_TOKEN_CHARS or not _TOKEN68.match(value):
        raise ConfigError(
            f"{name} must be {MIN_HTTP_TOKEN_CHARS}-{MAX_HTTP_TOKEN_CHARS} of A-Z a-z 0-9 - . _ ~ + /; "
            "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return value


def _host(name: str, value: str) -> str:
    if not _HOST.match(value):
        raise ConfigError(f"{name}={_shown(value)} is not a host name or an IP address")
    return value


_THRESHOLD = _whole_number(2, MAX_ALERT_THRESHOLD)  # 2 at least: 1 would flag every login
_ALERT_WINDOW = _whole_number(1, MAX_ALERT_WINDOW_S)

SETTINGS = (
    Setting("INPUT_BOOTSTRAP_SERVERS", "localhost:29092", "input cluster, host:port[,host:port...]", _servers),
    Setting("OUTPUT_BOOTSTRAP_SERVERS", "localhost:29093", "output cluster, host:port[,host:port...]", _servers),
    Setting("INPUT_TOPIC", "user-login", "topic to consume login events from", _name),
    Setting("OUTPUT_TOPIC", "processed-logins", "topic for processed events (output cluster)", _name),
    Setting("DLQ_TOPIC", "user-login-dlq", "dead-letter topic for rejected events (output cluster)", _name),
    Setting("CONSUMER_GROUP", "login-processor", "consumer group; processes in one group share partitions", _name),
    Setting(
        "PII_HASH_KEY",
        None,
        f"HMAC-SHA-256 key for ip and device_id, at least {MIN_PII_KEY_BYTES} bytes; "
        "unset: a random key per process (hashes then differ between runs)",
        _pii_key,
        secret=True,
    ),
    Setting(
        "REQUIRE_PII_HASH_KEY",
        "off",
        "on: a missing or empty PII_HASH_KEY stops the processor (exit 2) instead of hashing with a random key",
        _on_off,
    ),
    Setting("INSIGHTS_EVERY", "100", "print insights every N messages", _whole_number(1, MAX_INSIGHTS_EVERY)),
    Setting(
        "BATCH_SIZE",
        "2000",
        "most records polled, produced and committed as one batch",
        _whole_number(1, MAX_BATCH_SIZE),
    ),
    Setting(
        "KAFKA_CLIENT",
        KAFKA_PYTHON,
        f"client library: {' or '.join(KAFKA_CLIENTS)} (librdkafka; pip install -r requirements-confluent.txt)",
        _one_of(KAFKA_CLIENTS),
    ),
    Setting(
        "SECURITY_PROTOCOL",
        "PLAINTEXT",
        f"both clusters: one of {', '.join(SECURITY_PROTOCOLS)}",
        _one_of(SECURITY_PROTOCOLS, str.upper),
    ),
    Setting("SASL_MECHANISM", None, f"with SASL_*: one of {', '.join(SASL_MECHANISMS)}", _ascii_upper),
    Setting("SASL_USERNAME", None, "with SASL_*: user name", _text),
    Setting("SASL_PASSWORD", None, "with SASL_*: password", _text, secret=True),
    Setting("SSL_CAFILE", None, "with SSL or SASL_SSL: CA certificate file (PEM) to verify the brokers", _file),
    Setting("METRICS_PORT", "9400", "port of /metrics, /livez and /readyz; 0 turns them off", _port),
    Setting("METRICS_HOST", "127.0.0.1", "address they listen on (0.0.0.0 in a container)", _host),
    Setting(
        "PROBE_PORT",
        "0",
        "a port of their own for /livez and /readyz as well, for the kubelet (no client of METRICS_PORT can "
        "take its connections); 0: none",
        _port,
    ),
    Setting(
        "HTTP_ALLOWED_HOSTS",
        "localhost,127.0.0.1,[::1]",
        "Host names the dashboard and /api/* answer to, comma-separated, * for any (/metrics and probes: any)",
        _host_names,
    ),
    Setting(
        "HTTP_TOKEN",
        None,
        f"bearer token (at least {MIN_HTTP_TOKEN_CHARS} characters) the dashboard and /api/* require; "
        "unset: none (/metrics and probes never ask)",
        _http_token,
        secret=True,
    ),
    Setting(
        "LIVENESS_TIMEOUT_S",
        str(DEFAULT_LIVENESS_TIMEOUT_S),
        "seconds the run loop may go without coming round before /livez answers 503",
        _whole_number(1, MAX_LIVENESS_TIMEOUT_S),
    ),
    Setting(
        "LOG_FORMAT",
        "text",
        f"logs on stderr: {' or '.join(LOG_FORMATS)} (one JSON object per line)",
        _one_of(LOG_FORMATS),
    ),
    Setting("LIVE_INSIGHTS", "on", "windows, alerts, /api and the dashboard: on or off", _on_off),
    Setting("INSIGHTS_TOPIC", "login-insights", "topic for closed windows' summaries (output cluster)", _name),
    Setting("ALERTS_TOPIC", "login-alerts", "topic for suspicious-login alerts (output cluster)", _name),
    Setting(
        "WINDOW_SIZE_S",
        "60",
        "length of the event-time tumbling windows, seconds",
        _whole_number(1, MAX_WINDOW_S),
        field="windows.size_s",
    ),
    Setting(
        "WINDOW_GRACE_S",
        "10",
        "how long past its end a window still takes late events, seconds (0: none)",
        _whole_number(0, MAX_WINDOW_S),
        field="windows.grace_s",
    ),
    Setting(
        "WINDOW_IDLE_S",
        "30",
        "with no input for this long, windows past end + grace close by wall clock",
        _whole_number(1, MAX_WINDOW_S),
        field="windows.idle_s",
    ),
    *(
        Setting(env, str(default), help, parse, field=f"alerts.{field}")
        for env, default, help, parse, field in (
            (
                "ALERT_STUFFING_USERS",
                15,
                "credential stuffing: distinct users from one ip ...",
                _THRESHOLD,
                "credential_stuffing.threshold",
            ),
            (
                "ALERT_STUFFING_WINDOW_S",
                900,
                "... within this many seconds",
                _ALERT_WINDOW,
                "credential_stuffing.window_s",
            ),
            (
                "ALERT_LOCALES",
                3,
                "locale hopping: distinct locales of one user ...",
                _THRESHOLD,
                "locale_hopping.threshold",
            ),
            (
                "ALERT_LOCALES_WINDOW_S",
                10_800,
                "... within this many seconds",
                _ALERT_WINDOW,
                "locale_hopping.window_s",
            ),
            (
                "ALERT_DEVICE_USERS",
                10,
                "shared device: distinct users of one device ...",
                _THRESHOLD,
                "shared_device.threshold",
            ),
            ("ALERT_DEVICE_WINDOW_S", 3_600, "... within this many seconds", _ALERT_WINDOW, "shared_device.window_s"),
            ("ALERT_BURST_LOGINS", 20, "login burst: logins of one user ...", _THRESHOLD, "login_burst.threshold"),
            ("ALERT_BURST_WINDOW_S", 60, "... within this many seconds", _ALERT_WINDOW, "login_burst.window_s"),
            (
                "ALERT_STATE_KEYS",
                50_000,
                "ips, devices or users each rule remembers; least recent go first",
                _whole_number(1, MAX_STATE_KEYS),
                "capacity",
            ),
        )
    ),
)


@dataclass(frozen=True)
class Config:
    """Every setting's value, each field set by one of SETTINGS (no defaults here: they are SETTINGS')."""

    input_bootstrap_servers: tuple[str, ...]
    output_bootstrap_servers: tuple[str, ...]
    input_topic: str
    output_topic: str
    dlq_topic: str
    consumer_group: str
    pii_hash_key: bytes | None
    require_pii_hash_key: bool
    insights_every: int
    batch_size: int
    kafka_client: str
    security_protocol: str
    sasl_mechanism: str | None
    sasl_username: str | None
    sasl_password: str | None
    ssl_cafile: str | None
    metrics_port: int
    metrics_host: str
    probe_port: int
    http_allowed_hosts: tuple[str, ...]
    http_token: str | None
    liveness_timeout_s: int
    log_format: str
    live_insights: bool
    insights_topic: str
    alerts_topic: str
    windows: WindowSettings
    alerts: AlertSettings

    def __repr__(self) -> str:  # secrets stay out of logs and tracebacks
        secret = {setting.path for setting in SETTINGS if setting.secret}
        shown = {
            f.name: "***" if f.name in secret and getattr(self, f.name) else getattr(self, f.name) for f in fields(self)
        }
        return f"Config({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse quotes the arguments it did not recognise: one may be a secret given as a flag.
        if message.startswith("unrecognized arguments"):
            message = "unrecognized arguments (not shown): see --help; secrets come from the environment or a file"
        super().error(message)


def argument_parser(description: str) -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Each flag overrides the environment variable of the same name, which overrides .env. "
        "Secrets (PII_HASH_KEY, SASL_PASSWORD) come from the environment or a file, never a flag.",
        allow_abbrev=False,  # else --pii-hash-key would pass for --pii-hash-key-file, with the key as a path
    )
    for setting in SETTINGS:
        default = "unset" if setting.default is None else setting.default
        flag = f"--{setting.env.lower().replace('_', '-')}"
        if setting.secret:  # never on a command line, where /proc/PID/cmdline shows it to every local user
            parser.add_argument(
                f"{flag}-file",
                dest=f"{setting.env}_FILE",
                metavar="PATH",
                help=f"{setting.help}: read from this file [env {setting.env}, or a file named by {setting.env}_FILE]",
            )
            continue
        parser.add_argument(
            flag, dest=setting.env, metavar="VALUE", help=f"{setting.help} [env {setting.env}, default {default}]"
        )
    parser.add_argument("--env-file", default=".env", metavar="PATH", help="dotenv file to read (default .env)")
    return parser


def load(argv: list[str] | None, description: str, environ: dict[str, str] | None = None) -> Config:
    """Parse flags, read the dotenv file into the environment (never over it), validate everything."""
    args = argument_parser(description).parse_args(argv)
    if environ is None:
        load_dotenv(Path(args.env_file), override=False)
        environ = dict(os.environ)
    raw = {s.env: _pick(_given(s, args, environ), environ.get(s.env), s.default) for s in SETTINGS}
    return validate(raw)


def _given(setting: Setting, args: argparse.Namespace, environ: dict[str, str]) -> str | None:
    """A setting's value from its flag; a secret's from the file its flag or <NAME>_FILE names."""
    if not setting.secret:
        return getattr(args, setting.env)
    path = getattr(args, f"{setting.env}_FILE") or environ.get(f"{setting.env}_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{setting.env}_FILE={_shown(path)} cannot be read ({type(error).__name__})") from None


def _pick(flag: str | None, env: str | None, default: str | None) -> str | None:
    for value in (flag, env):
        if value is not None and value.strip() != "":
            return value.strip()
    return default


def validate(raw: dict[str, str | None]) -> Config:
    """Each setting parsed by its own parser, then the rules that hold between settings."""
    values: dict[str, Any] = {s.env: _parsed(s, raw[s.env]) for s in SETTINGS}
    protocol: str = values["SECURITY_PROTOCOL"]
    if protocol.startswith("SASL"):
        if values["SASL_MECHANISM"] not in SASL_MECHANISMS:
            raise ConfigError(f"SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)} with {protocol}")
        for name in ("SASL_USERNAME", "SASL_PASSWORD"):
            if not values[name]:
                raise ConfigError(f"{name} is required with SECURITY_PROTOCOL={protocol}")
    if values["REQUIRE_PII_HASH_KEY"] and values["PII_HASH_KEY"] is None:
        # An empty or forgotten key would give each replica a random key of its own: hashes that never match.
        raise ConfigError(
            "PII_HASH_KEY is required (REQUIRE_PII_HASH_KEY=on): set it to the key every instance shares, "
            "at least 16 bytes; generate one with: python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    if values["PROBE_PORT"] and values["PROBE_PORT"] == values["METRICS_PORT"]:
        raise ConfigError("PROBE_PORT must differ from METRICS_PORT: it is a listener of its own")
    written = ("OUTPUT_TOPIC", "DLQ_TOPIC", "INSIGHTS_TOPIC", "ALERTS_TOPIC")
    for index, name in enumerate(written):
        for other in written[index + 1 :]:
            if values[name] == values[other]:
                raise ConfigError(f"{name} and {other} must differ, or one kind of record would pass for another")
    return _record(Config, {setting.path: values[setting.env] for setting in SETTINGS})


def _parsed(setting: Setting, text: str | None) -> Any:
    return None if text is None else setting.parse(setting.env, text)


def defaults() -> Config:
    """The configuration with every setting at its default."""
    return validate({setting.env: setting.default for setting in SETTINGS})


def _record(kind: type, values: dict[str, Any]) -> Any:
    """`kind` built from values by dotted field path: "windows.size_s" goes to the WindowSettings it holds."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    hints = get_type_hints(kind)
    return kind(**direct, **{head: _record(hints[head], inner) for head, inner in nested.items()})


def _shown(value: str) -> str:
    """A value as quoted in an error line: repr (control characters escaped), cut to a readable length."""
    if len(value) > SHOWN_VALUE_CHARS:
        return repr(value[:SHOWN_VALUE_CHARS]) + f"... ({len(value):,} characters)"
    return repr(value)
