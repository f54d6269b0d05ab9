"""/metrics, /livez and /readyz: plain semantics, and no request of any shape takes them down.

The run loop here runs against the in-memory fakes (tests/fakes.py); the server is real, on a free
port, and is spoken to with raw sockets where a well-behaved client would not do what an attacker does.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import logging
import socket
import threading
import time

import pytest

from local_kafka.brokers import free_ports
from login_pipeline import logs
from login_pipeline.app import assemble, build_info
from login_pipeline.config import defaults, load
from login_pipeline.events import Revoking
from login_pipeline.insights import Insights
from login_pipeline.metrics import PipelineMetrics
from login_pipeline.status_server import MAX_CONNECTIONS, REQUEST_TIMEOUT_S, StatusServer, Verdict, serving
from login_pipeline.stop import StopRequest
from tests.fakes import FakeInput, FakeOutput
from tests.test_pipeline import process, records


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class BlockingInput(FakeInput):
    """An input whose poll can be made to hang (`stuck`) until `release`: a run loop stuck on purpose."""

    def __init__(self, output: FakeOutput) -> None:
        super().__init__(output, {0: records(0, 5)})
        self.stuck = threading.Event()
        self.release = threading.Event()

    def poll(self, timeout_s: float):
        if self.stuck.is_set():
            self.release.wait(30)
            self.stuck.clear()
        time.sleep(0.02)  # as a real poll waits when nothing arrives
        return super().poll(timeout_s)


@pytest.fixture
def running_pipeline():
    output = FakeOutput()
    source = BlockingInput(output)
    stop = StopRequest()
    config = load([], "test", environ={"LIVENESS_TIMEOUT_S": "1", "METRICS_PORT": "0"})
    pipeline = assemble(config, process, source, output, stop, out=io.StringIO())
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    yield pipeline, source, output
    stop.request()
    source.release.set()
    thread.join(10)


@pytest.fixture
def server(running_pipeline):
    pipeline, _, _ = running_pipeline
    silent: list[str] = []
    status = StatusServer(
        "127.0.0.1",
        free_ports(1)[0],
        pipeline.metrics.registry,
        pipeline.health.liveness,
        lambda: pipeline.health.readiness(silent),
    ).start()
    status.silent = silent  # type: ignore[attr-defined]
    yield status
    status.stop()


def test_livez_answers_503_once_the_run_loop_is_stuck_longer_than_the_liveness_timeout(server, running_pipeline):
    pipeline, source, _ = running_pipeline
    time.sleep(0.3)
    assert get(server.port, "/livez") == (200, b"ok\n")
    source.stuck.set()
    time.sleep(1.5)  # the loop sits in poll, never coming round
    status, body = get(server.port, "/livez")
    assert status == 503 and b"the run loop has not come round for" in body
    source.release.set()
    time.sleep(0.5)
    assert get(server.port, "/livez")[0] == 200


def test_readyz_says_what_is_missing(server, running_pipeline):
    pipeline, _, output = running_pipeline
    time.sleep(0.3)
    assert get(server.port, "/readyz") == (200, b"ok\n")  # joined (the fake assigns at its first poll)
    server.silent.append("output")
    output.dead = True
    status, body = get(server.port, "/readyz")
    assert status == 503
    assert body.decode().splitlines() == ["the output cluster does not answer", "the output is gone"]
    server.silent.clear()
    output.dead = False
    pipeline.health.revoking(Revoking(frozenset()))  # as the loop tells it when a rebalance begins
    assert get(server.port, "/readyz") == (503, b"not a member of the consumer group (joining or rebalancing)\n")


def test_metrics_are_the_prometheus_text_format(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    body = response.read().decode()
    connection.close()
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/plain; version=")
    assert "# TYPE login_processor_messages_consumed_total counter" in body
    assert "login_processor_build_info{" in body


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 404),
        ("GET", "/metrics/../etc/passwd", 404),
        ("GET", "/livez?verbose=1", 200),
        ("POST", "/metrics", 405),
        ("DELETE", "/readyz", 405),
        ("HEAD", "/livez", 200),
    ],
)
def test_only_get_and_head_of_the_three_paths_are_served(server, method, path, status):
    answered, body = get(server.port, path, method)
    assert answered == status
    if method == "HEAD":
        assert body == b""


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200),  # a TLS client hello
        b"GET /" + b"A" * 70_000 + b" HTTP/1.1\r\n\r\n",  # a request line past the limit
        b"GET /livez HTTP/1.1\r\n" + b"X-Header: y\r\n" * 200 + b"\r\n",  # too many headers
        b"\x00\xff\xfe garbage \r\n\r\n",
        b"GET /livez HTTP/9.9\r\n\r\n",
        b"GET /\x1b[31mred HTTP/1.0\r\n\r\n",
    ],
)
def test_malformed_requests_get_an_error_status_and_the_server_goes_on(server, request_bytes):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(request_bytes)
        answer = raw.recv(4096)
    assert answer == b"" or answer.startswith(b"HTTP/")
    assert b"\x1b" not in answer and b"AAAA" not in answer  # the request is never echoed
    assert get(server.port, "/livez")[0] == 200


@pytest.mark.slow  # waits out the request timeout
def test_slow_clients_holding_every_connection_get_no_thread_and_the_probes_return_after_them(server):
    # From many addresses (one alone may hold only MAX_CONNECTIONS_PER_CLIENT): every slot is taken.
    held = [
        socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=(f"127.0.1.{n % 20 + 1}", 0))
        for n in range(MAX_CONNECTIONS + 10)
    ]
    try:
        for sock in held:
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")  # never finished
        time.sleep(0.5)
        began = time.monotonic()
        status, _ = get(server.port, "/livez")
        assert status == 503 and time.monotonic() - began < 2  # refused at once, not queued
        time.sleep(REQUEST_TIMEOUT_S + 1)  # the slow ones are dropped after the request timeout
        assert get(server.port, "/livez")[0] == 200
        assert threading.active_count() < 40
    finally:
        for sock in held:
            sock.close()


def test_a_verdict_without_reasons_is_ok():
    assert Verdict(True).ok and Verdict(False, ("x",)).reasons == ("x",)


def test_json_logs_are_one_object_a_line_with_the_record_coordinates(capsys):
    logs.configure("json")
    try:
        logging.getLogger("login_pipeline.test").error(
            "process_message raised %s", "KeyError", extra={"topic": "user-login", "partition": 2, "offset": 41}
        )
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        logs.configure("text")
    entry = json.loads(line)
    assert entry["level"] == "ERROR" and entry["logger"] == "login_pipeline.test"
    assert entry["message"] == "process_message raised KeyError"
    assert (entry["topic"], entry["partition"], entry["offset"]) == ("user-login", 2, 41)
    assert entry["time"].endswith("+00:00")


def test_a_taken_port_warns_once_and_the_processor_runs_without_the_endpoints(caplog):
    registry = PipelineMetrics(build_info(defaults()), Insights().reading).registry
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with serving("127.0.0.1", port, registry, lambda: Verdict(True), lambda silent: Verdict(True), dict) as server:
            assert server is None
    assert "cannot serve /metrics, /livez and /readyz on 127.0.0.1:" in caplog.text and "METRICS_PORT" in caplog.text


def test_port_0_serves_nothing_and_probes_no_cluster():
    def probes():
        raise AssertionError("no probe is made when nothing is served")

    registry = PipelineMetrics(build_info(defaults()), Insights().reading).registry
    with serving("127.0.0.1", 0, registry, lambda: Verdict(True), lambda silent: Verdict(True), probes) as server:
        assert server is None


# -- Hostile clients: held connections, floods, another site's name ---------------------------------


@contextlib.contextmanager
def serving_a_page(running_pipeline, port: int | None = None, **options):
    """A started server of the running pipeline's probes and metrics and one page, `/api/insights`."""
    from login_pipeline.status_server import Page

    pipeline, _, _ = running_pipeline
    status = StatusServer(
        "127.0.0.1",
        port or free_ports(1)[0],
        pipeline.metrics.registry,
        pipeline.health.liveness,
        lambda: pipeline.health.readiness([]),
        {"/api/insights": lambda: Page(b"{}", "application/json")},
        **options,
    ).start()
    try:
        yield status
    finally:
        status.stop()


@pytest.fixture
def guarded(running_pipeline):
    """A server with a page, a 1 s request deadline, and the default Host allowlist."""
    with serving_a_page(running_pipeline, request_deadline_s=1.0) as status:
        yield status


def closed_within(sock: socket.socket, seconds: float, drip: bytes = b"") -> float | None:
    """Seconds until the server closed `sock` while a byte of `drip` was sent every 0.2 s; None if it never did."""
    began = time.monotonic()
    sock.settimeout(0.2)
    for byte in (drip * 1000)[: int(seconds / 0.2)] or [0] * int(seconds / 0.2):
        try:
            if drip:
                sock.sendall(bytes([byte]))
            if sock.recv(4096) == b"":
                return time.monotonic() - began
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - began
    return None


def test_a_client_dripping_a_byte_at_a_time_is_cut_at_the_request_deadline(guarded):
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        closed = closed_within(sock, 4.0, drip=b"GET /livez HTTP/1.1\r\nX-Slow: " + b"a" * 100)
    assert closed is not None and closed < 2.5  # the socket timeout alone restarted with every byte


def test_the_probes_answer_again_while_every_connection_is_held_by_drippers(guarded):
    held = [socket.create_connection(("127.0.0.1", guarded.port), timeout=10) for _ in range(MAX_CONNECTIONS)]
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(0.3):
            for sock in held:
                with contextlib.suppress(OSError):
                    sock.sendall(b"a")

    for sock in held:
        sock.sendall(b"GET /livez HTTP/1.1\r\nX-Slow: ")
    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        deadline = time.monotonic() + 5
        answered = None
        while time.monotonic() < deadline and answered != 200:
            answered = get(guarded.port, "/livez")[0]
            time.sleep(0.2)
        assert answered == 200
    finally:
        stop.set()
        dripper.join(5)
        for sock in held:
            sock.close()


def test_one_address_reconnecting_as_fast_as_it_can_never_crowds_out_the_probes(guarded):
    # The attack a pod in the cluster can make: as many dripping connections as the server takes,
    # each one replaced as soon as the deadline cuts it. The kubelet's probe comes from elsewhere.
    stop = threading.Event()
    opened = []

    def attack() -> None:
        held: list[socket.socket] = []
        while not stop.is_set():
            while len(held) < MAX_CONNECTIONS + 16:
                try:
                    sock = socket.create_connection(
                        ("127.0.0.1", guarded.port), timeout=1, source_address=("127.0.0.2", 0)
                    )
                    sock.sendall(b"GET /livez HTTP/1.1\r\nX-Slow: ")
                except OSError:
                    break
                held.append(sock)
                opened.append(1)
            alive = []
            for sock in held:
                try:
                    sock.sendall(b"a")
                    alive.append(sock)
                except OSError:
                    sock.close()
            held = alive
            stop.wait(0.1)
        for sock in held:
            sock.close()

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    try:
        time.sleep(0.5)
        answers = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            connection = http.client.HTTPConnection("127.0.0.1", guarded.port, timeout=1)  # the kubelet's timeout
            try:
                connection.request("GET", "/livez")
                answers.append(connection.getresponse().status)
            except OSError as error:
                answers.append(type(error).__name__)
            finally:
                connection.close()
            time.sleep(0.2)
    finally:
        stop.set()
        attacker.join(10)
    assert len(opened) > MAX_CONNECTIONS  # the attacker did try to take every slot
    assert answers and set(answers) == {200}, answers


def test_the_probes_own_port_answers_while_many_addresses_hold_every_slot_of_the_main_one(running_pipeline):
    # Four connections from each of sixteen addresses take all 64 slots of METRICS_PORT, and /livez
    # there answers 503. The kubelet asks PROBE_PORT, which no such client reaches.
    main_port, probe_port = free_ports(2)
    held: list[socket.socket] = []
    with serving_a_page(running_pipeline, main_port, request_deadline_s=60, probe_port=probe_port):
        try:
            for n in range(MAX_CONNECTIONS):
                source = (f"127.0.3.{n // 4 + 1}", 0)
                held.append(socket.create_connection(("127.0.0.1", main_port), timeout=10, source_address=source))
                held[-1].sendall(b"GET /livez HTTP/1.1\r\nX-Slow: ")
            time.sleep(0.3)
            assert get(main_port, "/livez")[0] == 503  # every slot of the main port is taken
            assert [get(probe_port, path)[0] for path in ("/livez", "/readyz")] == [200, 200]
            assert get(probe_port, "/metrics")[0] == 404  # the probes, and nothing else
            assert get(probe_port, "/api/insights")[0] == 404
        finally:
            for sock in held:
                sock.close()


def test_a_header_flood_is_dropped_unanswered_and_the_server_goes_on(guarded):
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /livez HTTP/1.1\r\n" + (b"X-Flood: " + b"b" * 1000 + b"\r\n") * 90 + b"\r\n")
        answer = b""
        with contextlib.suppress(OSError):
            answer = sock.recv(4096)
    assert not answer.startswith(b"HTTP/1.0 200")
    assert get(guarded.port, "/livez")[0] == 200


@pytest.mark.parametrize(
    "host, page_status",
    [
        ("attacker.example", 421),  # a DNS-rebinding page sends its own name
        ("attacker.example:9400", 421),
        ("localhost:9400", 200),
        ("127.0.0.1", 200),
        ("[::1]:9400", 200),
        ("", 421),
    ],
)
def test_pages_answer_only_loopback_host_names_and_the_probes_and_metrics_any(guarded, host, page_status):
    def status_of(path: str) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", guarded.port, timeout=10)
        try:
            connection.putrequest("GET", path, skip_host=True)
            if host:
                connection.putheader("Host", host)
            connection.endheaders()
            return connection.getresponse().status
        finally:
            connection.close()

    assert status_of("/api/insights") == page_status
    assert status_of("/livez") == 200 and status_of("/metrics") == 200


TOKEN = "t0ken-of-the-dashboard-at-least-32-chars"


@pytest.fixture
def with_token(running_pipeline):
    with serving_a_page(running_pipeline, token=TOKEN) as status:
        yield status


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    "authorization, status",
    [
        (None, 401),
        (f"Bearer {TOKEN}", 200),
        (f"bearer   {TOKEN}", 200),
        (basic("anyone", TOKEN), 200),
        (basic("", TOKEN), 200),
        (f"Bearer {TOKEN[:-1]}", 401),
        (f"Bearer {TOKEN}x", 401),
        (f"Bearer {TOKEN.upper()}", 401),
        (basic(TOKEN, "wrong"), 401),  # the token as the user name is not the password
        ("Basic !!!not-base64", 401),
        (f"Token {TOKEN}", 401),
        (TOKEN, 401),
        ("Bearer", 401),
        ("Bearer ", 401),
        ("Bearer \xff\xfe" + TOKEN, 401),  # latin-1 bytes, as any header may carry
        ("Basic " + base64.b64encode(b"\xff:" + TOKEN.encode() + b"\x00").decode(), 401),
    ],
)
def test_with_a_token_the_pages_need_it_and_nothing_else_does(with_token, authorization, status):
    connection = http.client.HTTPConnection("127.0.0.1", with_token.port, timeout=10)
    try:
        connection.request("GET", "/api/insights", headers={"Authorization": authorization} if authorization else {})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == status
    if status == 401:
        assert TOKEN.encode() not in body
        assert response.getheader("WWW-Authenticate", "").startswith("Basic realm=")  # a browser asks for it
    else:
        assert body == b"{}"
    # Prometheus and kubelets never send one
    assert get(with_token.port, "/metrics")[0] == 200 and get(with_token.port, "/livez")[0] == 200


def test_64_connections_each_sending_6_mb_of_headers_hold_no_memory_and_livez_answers(guarded):
    # Reproduced before the cap: 64 connections x 100 headers x 64 KiB took the server from 30 to 436 MB.
    import tracemalloc

    # Each line under http.client's 64 KiB limit, and 99 of them, under its 100 headers: the standard
    # library alone reads all of it.
    header = b"X-Flood: " + b"b" * 65_000 + b"\r\n"
    outcome = []

    def flood(n: int) -> None:
        source = (f"127.0.2.{n % 7 + 1}", 0)  # seven addresses: the cap per client is not what stops it
        with socket.create_connection(("127.0.0.1", guarded.port), timeout=10, source_address=source) as sock:
            try:
                sock.sendall(b"GET /livez HTTP/1.1\r\n")
                for _ in range(99):
                    sock.sendall(header)
                outcome.append("sent whole")
            except OSError:
                outcome.append("cut")

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        flooders = [threading.Thread(target=flood, args=(n,), daemon=True) for n in range(MAX_CONNECTIONS)]
        for thread in flooders:
            thread.start()
        status = get(guarded.port, "/livez")[0]
        for thread in flooders:
            thread.join(30)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert outcome.count("cut") == MAX_CONNECTIONS  # every flood was cut off, none read to its end
    assert peak < 16 * 1024 * 1024, peak
    assert status == 200 and get(guarded.port, "/livez")[0] == 200


def test_a_scrape_stuck_mid_read_never_holds_back_a_delivered_batch(monkeypatch):
    # Reproduced with one lock for both: 32 callers of /metrics and /api/insights cut the batches
    # delivered in 4 s from 216 to 116. Readers now read the reading the run loop published.
    from prometheus_client.exposition import generate_latest

    from login_pipeline.events import Delivered
    from login_pipeline.offsets import InFlightBatch
    from login_pipeline.running_insights import RunningInsights
    from login_pipeline.sketches import HyperLogLog

    running = RunningInsights(10**9, io.StringIO())
    metrics = PipelineMetrics(build_info(defaults()), lambda: running.published)
    reading, release = threading.Event(), threading.Event()
    counting = HyperLogLog.count

    def stuck_count(self):
        if threading.current_thread().name == "scrape":
            reading.set()
            release.wait(30)
        return counting(self)

    monkeypatch.setattr(HyperLogLog, "count", stuck_count)
    batch = [process(login, 1720576900.0) for _, login in records(0, 10)]
    running.delivered(Delivered(InFlightBatch({}, {}, batch), 0.0))
    scrape = threading.Thread(target=lambda: generate_latest(metrics.registry), name="scrape", daemon=True)
    scrape.start()
    try:
        assert reading.wait(10)  # the scrape is inside its read, and stays there
        delivering = threading.Thread(
            target=lambda: running.delivered(Delivered(InFlightBatch({}, {}, batch), 0.0)), daemon=True
        )
        delivering.start()
        delivering.join(10)
        assert not delivering.is_alive(), "a delivered batch waited for a scrape"
        assert running.published.processed == 20 and running.insights.processed == 20
    finally:
        release.set()
        scrape.join(10)
