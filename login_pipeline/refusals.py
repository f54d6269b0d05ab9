"""Why a cluster would not let the pipeline in, told in one line that says what to fix.

Both engines report connection trouble as retries that end in a timeout; the cause is in what the
client saw on the way (its log lines or error callbacks), which the engine collects as `symptoms`
and `unreachable` reads. A line names the cluster, the servers, the user and the setting to check,
never a password.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import deque
from collections.abc import Iterable, Iterator
from typing import NamedTuple, Optional

from login_pipeline.client import StartupError
from login_pipeline.config import Config

# A TLS record read as a Kafka frame: its first bytes are a record type (0x15 alert, 0x16 handshake)
# and version 3, so the "length" is 0x1503.... or 0x1603....
_FRAME_LENGTH = re.compile(r"invalid frame length: (\d+)", re.IGNORECASE)
_TLS_RECORD_PREFIXES = (0x1503, 0x1603)
MAX_SYMPTOMS = 50  # the newest telling client messages kept while a start-up check runs
# What a message must contain to say why a connection failed. Only these are kept: a client retrying
# for 15 s says "socket disconnected" dozens of times and the telling line once, first.
_TELLING = (
    "authentication failed",
    "saslauthenticationfailed",
    "invalid credentials",
    "certificate verify failed",
    "invalid frame length",
    "connecting to a ssl listener",
    "wrong version number",
    "connecting to a plaintext",
    "in state apiversion_query",
)
# kafka-python's line for a connection the broker closed, and its mark of one that got past ApiVersions.
_DISCONNECTED = "connection lost: kafkaconnectionerror: socket disconnected"
_VERSION_KNOWN = re.compile(r"broker_version=\(\d")
MAX_DISCONNECTS = 5  # only the newest few: a retrying client says this dozens of times


class Symptoms(logging.Handler):
    """What a client says while start-up checks run: kept to explain a timeout, never shown.

    Both clients only log (or report to a callback) why a connection failed, a refused password
    or an unverifiable certificate, and the call itself ends in a timeout; our one line replaces
    their retry chatter.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: deque[str] = deque(maxlen=MAX_SYMPTOMS)
        self._disconnects: deque[str] = deque(maxlen=MAX_DISCONNECTS)

    def emit(self, record: logging.LogRecord) -> None:
        self.note(record.getMessage())

    def note(self, message: str) -> None:
        """Keep `message` if it can tell why a connection failed."""
        lowered = message.lower()
        if any(marker in lowered for marker in _TELLING):
            self.seen.append(message)
        elif _DISCONNECTED in lowered:
            self._disconnects.append(message)

    def newest_first(self) -> list[str]:
        return [*reversed(self.seen), *reversed(self._disconnects)]

    @contextlib.contextmanager
    def collected_from(self, logger: logging.Logger) -> Iterator[Symptoms]:
        """Take `logger`'s messages instead of showing them, for the duration."""
        propagate = logger.propagate
        logger.propagate = False
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.propagate = propagate


class Access(NamedTuple):
    """How the pipeline reaches a cluster, as far as a message may tell (no password)."""

    cluster: str  # "input" or "output"
    servers: str
    protocol: str
    user: Optional[str]
    mechanism: Optional[str]
    ca_file: Optional[str]


def access(config: Config, cluster: str) -> Access:
    servers = config.input_bootstrap_servers if cluster == "input" else config.output_bootstrap_servers
    sasl = config.security_protocol.startswith("SASL")
    return Access(
        cluster,
        ",".join(servers),
        config.security_protocol,
        config.sasl_username if sasl else None,
        config.sasl_mechanism if sasl else None,
        config.ssl_cafile,
    )


def unreachable(access: Access, symptoms: Iterable[str], error_name: str) -> StartupError:
    """The start-up error for a cluster the client could not use, from what it saw while trying.

    What a client says outright (a refused password, an unverifiable certificate) wins over what a
    closed connection suggests: kafka-python sometimes sees only the broker hanging up.
    """
    where = f"the {access.cluster} cluster at {access.servers}"
    texts = [symptom.lower() for symptom in symptoms]
    for text in texts:
        if "authentication failed" in text or "saslauthenticationfailed" in text or "invalid credentials" in text:
            return StartupError(
                f"{where} refused {_who(access)}: {access.mechanism} authentication failed; "
                "check SASL_USERNAME and SASL_PASSWORD"
            )
        if "certificate verify failed" in text:
            signer = f"SSL_CAFILE={access.ca_file}" if access.ca_file else "the system's certificate authorities"
            return StartupError(
                f"{where} presented a TLS certificate that {signer} did not sign; "
                "set SSL_CAFILE to the CA that signed the brokers"
            )
        if _reads_tls(text) or "connecting to a ssl listener" in text:
            return StartupError(f"{where} speaks TLS, but SECURITY_PROTOCOL={access.protocol}: use SSL or SASL_SSL")
        if "wrong version number" in text or "connecting to a plaintext" in text:
            return StartupError(
                f"{where} does not speak TLS there, but SECURITY_PROTOCOL={access.protocol}: "
                "use PLAINTEXT or SASL_PLAINTEXT, or the cluster's TLS listener"
            )
    for text in texts:
        if access.protocol == "PLAINTEXT" and (
            "in state apiversion_query" in text or (_DISCONNECTED in text and "broker_version=unknown" in text)
        ):
            return StartupError(
                f"{where} closed the connection at the first request: it may expect TLS or SASL, "
                "but SECURITY_PROTOCOL=PLAINTEXT"
            )
        if access.protocol.startswith("SASL") and _DISCONNECTED in text and _VERSION_KNOWN.search(text):
            # It answered the first request (ApiVersions), then hung up: during authentication.
            return StartupError(
                f"{where} closed the connection during {access.mechanism} authentication of {_who(access)}; "
                "check SASL_USERNAME, SASL_PASSWORD and SASL_MECHANISM"
            )
    return StartupError(f"cannot reach {where} ({error_name})")


def _reads_tls(text: str) -> bool:
    match = _FRAME_LENGTH.search(text)
    return match is not None and int(match.group(1)) >> 16 in _TLS_RECORD_PREFIXES


def check_topic(access: Access, topic: str, error: Optional[str], allowed: Optional[set[str]], needed: str) -> None:
    """Stop with one line unless `topic` exists and the user may do `needed` on it.

    `error` is the cluster's answer for the topic (None, UNKNOWN_TOPIC_OR_PARTITION or
    TOPIC_AUTHORIZATION_FAILED); `allowed` the operations it reports authorized, None when it
    does not say (then the first refused request tells).
    """
    where = f"the {access.cluster} cluster at {access.servers}"
    if error == "TOPIC_AUTHORIZATION_FAILED":
        raise StartupError(
            f"topic {topic!r} does not exist on {where}, or {_who(access)} may not see it "
            f"(it needs {needed} on the topic)"
        )
    if error is not None:
        raise StartupError(f"topic {topic!r} does not exist on {where}")
    if allowed is not None and needed not in allowed:
        raise StartupError(
            f"{_who(access)} may not {needed} topic {topic!r} on {where}: "
            "grant the ACLs in the README's least-privilege table"
        )


def _who(access: Access) -> str:
    return f"user {access.user!r}" if access.user else "the anonymous user (no SASL)"
