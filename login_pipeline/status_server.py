"""/metrics, /livez, /readyz and the live insights' pages over HTTP, on threads of their own.

- `/metrics`: the Prometheus text format, prometheus_client's exposition of the pipeline's registry.
- `/livez`: 200 while the run loop comes round within LIVENESS_TIMEOUT_S; else 503, for Kubernetes
  to restart a process that is stuck. Waiting for a cluster is not stuck: the loop's own waits are
  bounded below that timeout.
- `/readyz`: 200 only when both clusters answered a probe within READY_WINDOW_S, the member holds
  its assignment (possibly none, in a group with more members than partitions) and the output is
  alive; else 503 with what is missing, one reason a line.

- The pages given (login_pipeline.web: the dashboard at `/`, `/api/insights`, `/api/alerts`).

Nothing else is served: other paths 404, other methods 405. At most MAX_CONNECTIONS are served
at once, and at most MAX_CONNECTIONS_PER_CLIENT from one address (more are closed with 503), so a
port scan cannot pile up threads and one client, however many connections it opens, leaves the
kubelet's probes and Prometheus's scrapes most of the slots. Against a client that holds a
connection on purpose:
- a deadline for the whole exchange (`request_deadline_s`, REQUEST_TIMEOUT_S by default): a
  watcher shuts down any connection still open after it, however steadily the client drips bytes
  (a socket timeout alone restarts with every byte);
- at most MAX_REQUEST_BYTES of request line and headers; past them the connection is dropped,
  so header floods cannot grow memory.
The dashboard and /api/* answer only requests whose Host header names one of `allowed_hosts`
(loopback names by default; a DNS-rebinding page in a browser sends its own name and gets 421);
/metrics and the probes answer any Host, as Prometheus and kubelets address pods by IP. With a
`token`, the dashboard and /api/* also need it, as `Authorization: Bearer <token>` (scripts) or as
the password of HTTP Basic (a browser asks for it; any user name); else 401. /metrics and the
probes never ask, as Prometheus and kubelets expect: they hold counts, never input data. Bodies
never hold input data or secrets.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, NamedTuple

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from login_pipeline.metrics import PREFIX

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 2.0
READY_WINDOW_S = 5.0  # a cluster counts as answering for this long after its last answer
REQUEST_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 64
# One address may hold an eighth of the slots: 80 drippers from one pod answered /livez 503 ten
# probes in ten while every slot was theirs. Clients behind one proxy share its address.
MAX_CONNECTIONS_PER_CLIENT = MAX_CONNECTIONS // 8
MAX_REQUEST_BYTES = 8 * 1024  # request line and headers: a browser's are under 2 KiB
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
TEXT = "text/plain; charset=utf-8"

ClusterProbe = Callable[[], bool]  # one bounded request to a cluster: True when it answered


class Page(NamedTuple):
    body: bytes
    content_type: str


class Verdict(NamedTuple):
    ok: bool
    reasons: tuple[str, ...] = ()  # why not, one short line each


class ClusterWatch:
    """Asks each cluster every PROBE_INTERVAL_S, on a thread of its own, whether it answers."""

    def __init__(self, probes: dict[str, ClusterProbe], clock: Callable[[], float] = time.monotonic) -> None:
        self._probes = probes
        self._clock = clock
        self._answered: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cluster-watch", daemon=True)

    def start(self) -> ClusterWatch:
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            for name, probe in self._probes.items():
                try:
                    answered = probe()
                except Exception:  # a probe must never end the watch; not answering is the verdict
                    answered = False
                if answered:
                    self._answered[name] = self._clock()
            self._stop.wait(PROBE_INTERVAL_S)

    def silent(self) -> list[str]:
        """The clusters that have not answered within READY_WINDOW_S."""
        now = self._clock()
        return [name for name in self._probes if now - self._answered.get(name, -READY_WINDOW_S - 1) > READY_WINDOW_S]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=PROBE_INTERVAL_S + 5)


class StatusServer:
    """The HTTP endpoints; `liveness` and `readiness` are asked on every probe and must not block.

    With a `probe_port`, the probes are also served on a listener of their own, with its own slots
    and nothing else on it: whoever fills the main port's slots (from as many addresses as they
    like) cannot reach the kubelet's, where a NetworkPolicy admits no pod to it (Kubernetes lets a
    node's own traffic, its kubelet's probes, through whatever the policy says).
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        liveness: Callable[[], Verdict],
        readiness: Callable[[], Verdict],
        pages: dict[str, Callable[[], Page]] | None = None,
        allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS,
        request_deadline_s: float = REQUEST_TIMEOUT_S,
        token: str | None = None,
        probe_port: int | None = None,
    ) -> None:
        probes = {"/livez": liveness, "/readyz": readiness}
        main = _Listener(host, port, request_deadline_s, registry, probes, pages or {}, allowed_hosts, token)
        self._listeners = [main]
        self.port = main.port
        self.probe_port: int | None = None
        if probe_port is not None:
            try:
                probes_only = _Listener(host, probe_port, request_deadline_s, None, probes, {}, allowed_hosts, None)
            except OSError:
                main.close()
                raise
            self._listeners.append(probes_only)
            self.probe_port = probes_only.port

    def start(self) -> StatusServer:
        for listener in self._listeners:
            listener.start()
        return self

    def stop(self) -> None:
        for listener in self._listeners:
            listener.stop()


class _Listener:
    """One port: its server thread, its slots and its deadlines."""

    def __init__(
        self,
        host: str,
        port: int,
        request_deadline_s: float,
        registry: CollectorRegistry | None,
        probes: dict[str, Callable[[], Verdict]],
        pages: dict[str, Callable[[], Page]],
        allowed_hosts: tuple[str, ...],
        token: str | None,
    ) -> None:
        self._deadlines = _Deadlines(request_deadline_s)
        handler = _handler(registry, probes, pages, _Slots(), self._deadlines, allowed_hosts, token)
        self._server = _Server((host, port), handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"http-{self.port}", daemon=True)

    def start(self) -> None:
        self._deadlines.start()
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self.close()
        self._thread.join(timeout=10)
        self._deadlines.stop()

    def close(self) -> None:
        """Its port is given back (a listener that never started needs only this)."""
        self._server.server_close()


class _Slots:
    """Connections being served: at most MAX_CONNECTIONS, of which MAX_CONNECTIONS_PER_CLIENT per address."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held = 0
        self._by_client: dict[str, int] = {}  # only addresses holding a slot: bounded by MAX_CONNECTIONS

    def take(self, client: str) -> bool:
        with self._lock:
            held_by_client = self._by_client.get(client, 0)
            if self._held >= MAX_CONNECTIONS or held_by_client >= MAX_CONNECTIONS_PER_CLIENT:
                return False
            self._held += 1
            self._by_client[client] = held_by_client + 1
            return True

    def give_back(self, client: str) -> None:
        with self._lock:
            self._held -= 1
            left = self._by_client[client] - 1
            if left:
                self._by_client[client] = left
            else:
                del self._by_client[client]


class _Deadlines:
    """Shuts down every connection still open `deadline_s` after it was taken, from a thread of its own."""

    TICK_S = 0.1

    def __init__(self, deadline_s: float) -> None:
        self._deadline_s = deadline_s
        self._open: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="http-deadlines", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._open[connection] = time.monotonic() + self._deadline_s

    def closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._open.pop(connection, None)

    def _watch(self) -> None:
        while not self._stop.wait(self.TICK_S):
            now = time.monotonic()
            with self._lock:
                late = [connection for connection, deadline in self._open.items() if deadline < now]
                for connection in late:
                    del self._open[connection]
            for connection in late:
                with contextlib.suppress(OSError):  # the blocked read or write returns, its thread ends
                    connection.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class _RequestTooLarge(ConnectionError):
    """More than MAX_REQUEST_BYTES of request line and headers: the connection is dropped, unanswered."""


class _CappedReader:
    """The request's file, read at most MAX_REQUEST_BYTES in all (the request line and the headers)."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self._left = MAX_REQUEST_BYTES

    def readline(self, size: int = -1) -> bytes:
        limit = self._left + 1 if size < 0 else min(size, self._left + 1)
        line = self._file.readline(limit)
        self._left -= len(line)
        if self._left < 0:
            raise _RequestTooLarge()
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Listen backlog: a burst of connections is taken and answered (served, or 503 past
    # MAX_CONNECTIONS), not left half-open in the kernel's queue.
    request_queue_size = 2 * MAX_CONNECTIONS

    def handle_error(self, request, client_address) -> None:
        # A client hanging up mid-answer is its own business; anything else is ours, said in one line.
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, TimeoutError)):
            log.warning("answering an HTTP request failed: %s", type(error).__name__)


def _handler(
    registry: CollectorRegistry | None,  # None: no /metrics (the probes' own listener)
    probes: dict[str, Callable[[], Verdict]],
    pages: dict[str, Callable[[], Page]],
    slots: _Slots,
    deadlines: _Deadlines,
    allowed_hosts: tuple[str, ...],
    token: str | None,
):
    any_host = "*" in allowed_hosts
    expected = token.encode() if token else None
    allowed = {host.lower() for host in allowed_hosts}

    paths = ", ".join([*(["/metrics"] if registry is not None else []), *probes, *pages])

    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_S  # the socket's: a request that does not arrive whole in time is dropped
        server_version = "login-processor"
        sys_version = ""

        def setup(self) -> None:
            super().setup()
            self.rfile = _CappedReader(self.rfile)  # type: ignore[assignment]

        def handle(self) -> None:
            client = self.client_address[0]
            if not slots.take(client):
                with contextlib.suppress(OSError):
                    self.wfile.write(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                return
            deadlines.opened(self.connection)
            try:
                super().handle()
            finally:
                deadlines.closed(self.connection)
                slots.give_back(client)

        def _host_allowed(self) -> bool:
            host = (self.headers.get("Host") or "").strip().lower()
            if host.startswith("["):  # [::1] or [::1]:9400
                name = host[: host.find("]") + 1]
            else:  # name, name:9400, 127.0.0.1:9400
                name = host.split(":", 1)[0]
            return any_host or name in allowed

        def _authorized(self) -> bool:
            if expected is None:
                return True
            scheme, _, credentials = (self.headers.get("Authorization") or "").strip().partition(" ")
            given = credentials.strip().encode()
            if scheme.lower() == "basic":
                try:
                    given = base64.b64decode(given, validate=True).partition(b":")[2]
                except (binascii.Error, ValueError):
                    return False
            elif scheme.lower() != "bearer":
                return False
            return hmac.compare_digest(given, expected)  # in constant time: no guessing it a byte at a time

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics" and registry is not None:
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in probes:
                verdict = probes[path]()
                body = "ok\n" if verdict.ok else "".join(f"{reason}\n" for reason in verdict.reasons)
                self._reply(200 if verdict.ok else 503, body.encode(), TEXT)
            elif path in pages and not self._host_allowed():
                self._reply(421, b"this host name is not served here: set HTTP_ALLOWED_HOSTS\n", TEXT)
            elif path in pages and not self._authorized():
                self._reply(
                    401,
                    b"this page needs HTTP_TOKEN: Authorization: Bearer <token>, or as a browser's password\n",
                    TEXT,
                    challenges=('Basic realm="login-processor", charset="UTF-8"', 'Bearer realm="login-processor"'),
                )
            elif path in pages:
                page = pages[path]()
                self._reply(200, page.body, page.content_type)
            else:
                self._reply(404, f"not found: try {paths}\n".encode(), TEXT)

        def do_HEAD(self) -> None:
            self.do_GET()

        def _reply(self, status: int, body: bytes, content_type: str, challenges: tuple[str, ...] = ()) -> None:
            self.send_response(status)
            for challenge in challenges:
                self.send_header("WWW-Authenticate", challenge)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            # The dashboard loads nothing from elsewhere and may not be framed: a page of ours cannot be
            # made to run another site's script, nor be overlaid on one.
            self.send_header("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            # The standard page echoes parts of the request; a bare status line says enough.
            with contextlib.suppress(OSError):
                self._reply(code, b"", TEXT)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every few seconds would drown the operational log

    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"):
        setattr(Handler, f"do_{method}", lambda self: self._reply(405, b"", TEXT))
    return Handler


@contextlib.contextmanager
def serving(
    host: str,
    port: int,
    registry: CollectorRegistry,
    liveness: Callable[[], Verdict],
    readiness: Callable[[list[str]], Verdict],
    probes: Callable[[], dict[str, ClusterProbe]],
    pages: dict[str, Callable[[], Page]] | None = None,
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS,
    token: str | None = None,
    probe_port: int = 0,
) -> Iterator[StatusServer | None]:
    """Serve for the duration; with port 0, or a port already taken, nothing is served (a warning says so).

    `readiness` is given the clusters that do not answer; `probes` makes the cluster probes, only when serving.
    A `probe_port` other than 0 serves the probes on a listener of their own as well.
    """
    if port == 0:
        yield None
        return
    watch = ClusterWatch(probes())
    try:
        server = StatusServer(
            host,
            port,
            registry,
            liveness,
            lambda: readiness(watch.silent()),
            pages,
            allowed_hosts,
            token=token,
            probe_port=probe_port or None,
        )
        # The same verdicts as the probes, for alerting rules (Prometheus cannot call /readyz itself).
        Gauge(f"{PREFIX}_ready", "1 while /readyz answers 200, else 0.", registry=registry).set_function(
            lambda: float(readiness(watch.silent()).ok)
        )
        Gauge(f"{PREFIX}_live", "1 while /livez answers 200, else 0.", registry=registry).set_function(
            lambda: float(liveness().ok)
        )
    except OSError as error:
        log.warning(
            "cannot serve /metrics, /livez and /readyz on %s:%s (%s); running without them (set METRICS_PORT%s)",
            host,
            port if not probe_port else f"{port} and {probe_port}",
            error.strerror or type(error).__name__,
            " and PROBE_PORT" if probe_port else "",
        )
        yield None
        return
    watch.start()
    server.start()
    log.info(
        "serving %s on http://%s:%d%s",
        "/metrics, /livez, /readyz" + (", /api and the dashboard at /" if pages else ""),
        host,
        server.port,
        f", and /livez, /readyz alone on port {server.probe_port}" if server.probe_port else "",
    )
    try:
        yield server
    finally:
        server.stop()
        watch.stop()
