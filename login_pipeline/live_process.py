"""Live insights in a process of their own, so that windows and alert rules do not slow the run loop.

Why a process: counted in the run loop, the windows and the four rules cost about 8 us of Python a
login, and one interpreter holds one core (`make bench`: 0.90 of the processor without them on
kafka-python, 0.66 on confluent-kafka). Here the run loop only joins the valid logins' output
bytes (already made, for the output topic) and hands a batch over: a small pickled header, then
the bytes as they are. That costs the run loop's process 0.4 us of CPU a login, against 1.8 us
for rows of the fields taken out of each record and pickled (40,000 logins of the generator's mix
in batches of 2,000, process_time of the parent; a pickled copy of the bytes costs 0.3 us more,
in page faults). The child decodes them in C (msgspec), counts the logins in a LiveInsights of
its own, publishes, and answers questions.

`LiveProcess` is login_pipeline.live.Live, with LiveInsights' contract, and besides:
- `observe` and `assigned` hand over and return (they block only while the pipe is full: that is
  the backpressure); the child ticks by itself, every TICK_S and after each message.
- `flush` and `snapshot` wait for the child's answer, at most their timeout; a late answer is
  recognised by its request number and dropped.
- If the child dies or stops answering: one error line, and the live insights stop (snapshot
  empty); the pipeline goes on, because the input is never held back for derived records.
- The child ignores SIGINT and SIGTERM (the parent decides when to stop) and exits when the parent
  closes it or disappears, so it never outlives the processor.
"""

from __future__ import annotations

import itertools
import logging
import threading
from multiprocessing.connection import Connection
from typing import Any, Callable, NamedTuple, Optional, Union

import msgspec

from login_pipeline import gc_tuning
from login_pipeline.child_process import Child, Close
from login_pipeline.client import Publisher, StartupError
from login_pipeline.live import LiveInsights, LiveSettings, instance_name
from login_pipeline.results import ProcessedLogin, ProcessingResult, Rejection
from login_pipeline.windows import Span

log = logging.getLogger(__name__)

TICK_S = 0.5
START_TIMEOUT_S = 30.0
ANSWER_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 15.0  # the child flushes its publisher, within its own 5 s

# The messages between the run loop and the live child (login_pipeline.child_process).


class Batch(NamedTuple):
    """Parent to child: a delivered batch's rejections by index; its logins follow as the next message,
    raw bytes (their output records, comma-separated), sent without a pickle's copy."""

    rejections: dict[int, str]
    spans: list[Span]
    processed_at: float


class Assigned(NamedTuple):
    partitions: set[int]


class Start(NamedTuple):
    """Question: start the publisher and the windows; answered "ready", or why not."""


class Flush(NamedTuple):
    """Question: publish the open windows as partials, waiting at most `timeout_s`; answered "flushed"."""

    reason: str
    timeout_s: float


class Snapshot(NamedTuple):
    """Question: what /api/insights shows of this process; answered with a dict."""


class Ask(NamedTuple):
    """Parent to child: a question, numbered so that a late answer is recognised and dropped."""

    number: int
    question: Union[Start, Flush, Snapshot]


class Answer(NamedTuple):
    """Child to parent."""

    number: int
    value: Any


class LiveProcess:
    """login_pipeline.live.Live in a child process; see the module's doc. Thread-safe."""

    def __init__(
        self,
        settings: LiveSettings,
        log_format: str,
        pseudonymize: Callable[[str], str],
        publisher_factory: Callable[[], Publisher],
    ) -> None:
        """Start the child and wait until its publisher is up; StartupError says why not.

        `publisher_factory` is called in the child, so it must pickle (a module-level function or a
        partial of one)."""
        self._child = Child(
            _serve, (settings, pseudonymize, publisher_factory, instance_name()), "login-live", log_format
        )
        self._connection = self._child.connection
        self._lock = threading.Lock()  # the run loop and HTTP threads share the pipe
        self._requests = itertools.count()
        self._gone = False
        answer = self._ask(Start(), START_TIMEOUT_S)
        if answer != "ready":
            self.close()
            raise StartupError(f"the live insights could not start: {answer or 'their process did not answer'}")

    def observe(self, results: list[ProcessingResult], spans: list[Span], processed_at: float) -> None:
        logins = b",".join([result.value for result in results if result.__class__ is ProcessedLogin])
        rejections = {
            index: result.reason  # type: ignore[union-attr]
            for index, result in enumerate(results)
            if result.__class__ is not ProcessedLogin
        }
        self._tell(Batch(rejections, spans, processed_at), logins)

    def assigned(self, partitions: set[int]) -> None:
        self._tell(Assigned(partitions))

    def tick(self) -> None:
        pass  # the child ticks by itself

    def flush(self, reason: str, timeout_s: float) -> None:
        self._ask(Flush(reason, timeout_s), timeout_s + ANSWER_TIMEOUT_S)

    def snapshot(self) -> dict[str, Any]:
        answer = self._ask(Snapshot(), ANSWER_TIMEOUT_S)
        return answer if isinstance(answer, dict) else {}

    def close(self) -> None:
        with self._lock:  # from here on no thread uses the pipe: the child may be stopped outside the lock
            self._gone = True
        self._child.stop(CLOSE_TIMEOUT_S)

    def _tell(self, message: Union[Batch, Assigned], payload: Optional[bytes] = None) -> None:
        with self._lock:
            if self._gone:
                return
            try:
                self._connection.send(message)
                if payload is not None:
                    self._connection.send_bytes(payload)
            except OSError as error:
                self._lost(f"its process is gone ({type(error).__name__})")

    def _ask(self, question: Union[Start, Flush, Snapshot], timeout_s: float) -> Any:
        """Send a question, wait for its answer (at most `timeout_s`); None when none came."""
        with self._lock:
            if self._gone:
                return None
            number = next(self._requests)
            try:
                self._connection.send(Ask(number, question))
                while self._connection.poll(timeout_s):
                    answer = self._connection.recv()
                    if isinstance(answer, Answer) and answer.number == number:
                        return answer.value
            except (OSError, EOFError) as error:
                self._lost(f"its process is gone ({type(error).__name__})")
                return None
            log.warning("the live insights did not answer %s within %.0f s", type(question).__name__, timeout_s)
            return None

    def _lost(self, why: str) -> None:
        if not self._gone:
            log.error("live insights stopped: %s; the pipeline goes on without them", why)
        self._gone = True


def _serve(
    connection: Connection,
    settings: LiveSettings,
    pseudonymize: Callable[[str], str],
    publisher_factory: Callable[[], Publisher],
    instance: str,
) -> None:
    """The child: a LiveInsights fed by the parent's messages, until Close or the parent is gone."""
    live: Optional[LiveInsights] = None
    try:
        while True:
            if connection.poll(TICK_S):
                try:
                    message = connection.recv()
                except (EOFError, OSError):
                    return  # the parent is gone
                if isinstance(message, Close):
                    return
                if isinstance(message, Ask):
                    question = message.question
                    if isinstance(question, Start):
                        try:
                            live = LiveInsights(settings, publisher_factory(), pseudonymize, instance=instance)
                            connection.send(Answer(message.number, "ready"))
                            gc_tuning.freeze_startup_objects()
                        except Exception as error:  # said in the parent's one line
                            connection.send(Answer(message.number, f"{type(error).__name__}: {error}"))
                            return
                    elif live is not None and isinstance(question, Flush):
                        live.flush(question.reason, question.timeout_s)
                        connection.send(Answer(message.number, "flushed"))
                    elif live is not None and isinstance(question, Snapshot):
                        connection.send(Answer(message.number, live.snapshot()))
                elif isinstance(message, Batch):
                    try:
                        logins = connection.recv_bytes()
                    except (EOFError, OSError):
                        return
                    if live is not None:
                        live.observe(_rebuilt(logins, message.rejections), message.spans, message.processed_at)
                elif live is not None and isinstance(message, Assigned):
                    live.assigned(message.partitions)
            if live is not None:
                live.tick()
    finally:
        if live is not None:
            live.close()


def _rebuilt(logins: bytes, rejections: dict[int, str]) -> list[ProcessingResult]:
    """The batch's results in their order again: logins with their records, rejections by reason."""
    records = _decode_records(b"[" + logins + b"]")
    rebuilt: list[ProcessingResult] = [ProcessedLogin(b"", b"", record) for record in records]
    if not rejections:
        return rebuilt
    total = len(rebuilt) + len(rejections)
    rest = iter(rebuilt)
    return [Rejection(rejections[index], None, "") if index in rejections else next(rest) for index in range(total)]


_decode_records = msgspec.json.Decoder(list[dict[str, Any]]).decode
