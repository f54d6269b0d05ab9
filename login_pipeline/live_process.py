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
import multiprocessing
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, NamedTuple, Optional, Union

from login_pipeline import gc_tuning, live_logins
from login_pipeline.child_process import Child, Close
from login_pipeline.client import Feed, Publisher, StartupError
from login_pipeline.live import KEPT_WINDOWS, FeedReader, GroupView, LiveInsights, LiveSettings, instance_name
from login_pipeline.results import ProcessingResult
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


class GroupWindows(NamedTuple):
    """Question: the group's merged closed windows (GroupView.windows); answered with a list."""


class GroupTotals(NamedTuple):
    """Question: the group's totals (GroupView.totals); answered with a dict."""


class GroupAlerts(NamedTuple):
    """Question: the group's recent alerts (GroupView.alerts); answered with a list."""


Question = Union[Start, Flush, Snapshot, GroupWindows, GroupTotals, GroupAlerts]


class Ask(NamedTuple):
    """Parent to child: a question, numbered so that a late answer is recognised and dropped."""

    number: int
    question: Question


class Answer(NamedTuple):
    """Child to parent."""

    number: int
    value: Any


class _Pipe:
    """One end of a pipe to the child, with its lock: a question and its answer are never interleaved."""

    def __init__(self, connection: Connection, live: LiveProcess) -> None:
        self.connection = connection
        self.lock = threading.Lock()
        self._live = live

    def tell(self, message: Union[Batch, Assigned], payload: Optional[bytes] = None) -> None:
        with self.lock:
            if self._live.gone:
                return
            try:
                self.connection.send(message)
                if payload is not None:
                    self.connection.send_bytes(payload)
            except OSError as error:
                self._live.lost(f"its process is gone ({type(error).__name__})")

    def ask(self, question: Question, timeout_s: float) -> Any:
        """Send a question, wait for its answer (at most `timeout_s`); None when none came."""
        with self.lock:
            if self._live.gone:
                return None
            number = next(self._live.requests)
            try:
                self.connection.send(Ask(number, question))
                deadline = time.monotonic() + timeout_s
                while self.connection.poll(max(deadline - time.monotonic(), 0)):
                    answer = self.connection.recv()
                    if isinstance(answer, Answer) and answer.number == number:
                        return answer.value
            except (OSError, EOFError) as error:
                self._live.lost(f"its process is gone ({type(error).__name__})")
                return None
            log.warning("the live insights did not answer %s within %.0f s", type(question).__name__, timeout_s)
            return None


class LiveProcess:
    """login_pipeline.live.Live in a child process; see the module's doc. Thread-safe."""

    def __init__(
        self,
        settings: LiveSettings,
        log_format: str,
        pseudonymize: Callable[[str], str],
        publisher_factory: Callable[[], Publisher],
        feed_factory: Optional[Callable[[float], Feed]] = None,
        users_key: bytes = b"",
    ) -> None:
        """Start the child and wait until its publisher is up; StartupError says why not.

        `publisher_factory` and `feed_factory` (given the epoch seconds to read from; None: no group
        view) are called in the child, so they must pickle (module-level functions or partials of one)."""
        context = multiprocessing.get_context("spawn")
        questions, child_questions = context.Pipe()
        arguments = (
            child_questions,
            settings,
            pseudonymize,
            publisher_factory,
            feed_factory,
            users_key,
            instance_name(),
        )
        self._child = Child(_serve, arguments, "login-live", log_format)
        child_questions.close()
        self.gone = False
        self.requests = itertools.count()
        self._batches = _Pipe(self._child.connection, self)  # the run loop's: batches, assignments, flushes
        self._questions = _Pipe(questions, self)  # HTTP and metrics threads': they never wait on a batch
        self.group = GroupAnswers(self._questions)
        answer = self._questions.ask(Start(), START_TIMEOUT_S)
        if answer != "ready":
            self.close()
            raise StartupError(f"the live insights could not start: {answer or 'their process did not answer'}")

    def observe(self, results: list[ProcessingResult], spans: list[Span], processed_at: float) -> None:
        batch = Batch(live_logins.rejections_of(results), spans, processed_at)
        self._batches.tell(batch, live_logins.joined_values(results))

    def assigned(self, partitions: set[int]) -> None:
        self._batches.tell(Assigned(partitions))

    def tick(self) -> None:
        pass  # the child ticks by itself

    def flush(self, reason: str, timeout_s: float) -> None:
        self._batches.ask(Flush(reason, timeout_s), timeout_s + ANSWER_TIMEOUT_S)  # after the batches sent

    def snapshot(self) -> dict[str, Any]:
        answer = self._questions.ask(Snapshot(), ANSWER_TIMEOUT_S)
        return answer if isinstance(answer, dict) else {}

    def close(self) -> None:
        with self._batches.lock, self._questions.lock:  # from here on no thread uses the pipes
            self.gone = True
        self._child.stop(CLOSE_TIMEOUT_S)
        self._questions.connection.close()

    def lost(self, why: str) -> None:
        if not self.gone:
            log.error("live insights stopped: %s; the pipeline goes on without them", why)
        self.gone = True


class GroupAnswers:
    """login_pipeline.live.GroupReadings, asked of the child's GroupView; empty when it does not answer."""

    def __init__(self, questions: _Pipe) -> None:
        self._questions = questions

    def windows(self) -> list[dict[str, Any]]:
        answer = self._questions.ask(GroupWindows(), ANSWER_TIMEOUT_S)
        return answer if isinstance(answer, list) else []

    def totals(self) -> dict[str, Any]:
        answer = self._questions.ask(GroupTotals(), ANSWER_TIMEOUT_S)
        return answer if isinstance(answer, dict) else {}

    def alerts(self) -> list[dict[str, Any]]:
        answer = self._questions.ask(GroupAlerts(), ANSWER_TIMEOUT_S)
        return answer if isinstance(answer, list) else []


def _serve(
    batches: Connection,
    questions: Connection,
    settings: LiveSettings,
    pseudonymize: Callable[[str], str],
    publisher_factory: Callable[[], Publisher],
    feed_factory: Optional[Callable[[float], Feed]],
    users_key: bytes,
    instance: str,
) -> None:
    """The child: a LiveInsights fed by the parent's batches, and a GroupView fed by a thread of its
    own from the insights topics, until Close or the parent is gone."""
    live: Optional[LiveInsights] = None
    view: Optional[GroupView] = None
    reader: Optional[FeedReader] = None

    def answer(connection: Connection, message: Ask) -> bool:
        """Answer one question; False when the child cannot go on."""
        nonlocal live, view, reader
        question = message.question
        value: Any = None
        if isinstance(question, Start):
            try:
                live = LiveInsights(settings, publisher_factory(), pseudonymize, instance=instance, users_key=users_key)
                if feed_factory is not None:
                    view = GroupView(settings.insights_topic, settings.alerts_topic)
                    since = time.time() - KEPT_WINDOWS * settings.windows.size_s
                    reader = FeedReader(feed_factory(since), view).start()
                gc_tuning.freeze_startup_objects()
            except Exception as error:  # said in the parent's one line
                connection.send(Answer(message.number, f"{type(error).__name__}: {error}"))
                return False
            value = "ready"
        elif live is not None and isinstance(question, Flush):
            live.flush(question.reason, question.timeout_s)
            value = "flushed"
        elif live is not None and isinstance(question, Snapshot):
            value = live.snapshot()
        elif view is not None and isinstance(question, GroupWindows):
            value = view.windows()
        elif view is not None and isinstance(question, GroupTotals):
            value = view.totals()
        elif view is not None and isinstance(question, GroupAlerts):
            value = view.alerts()
        connection.send(Answer(message.number, value))
        return True

    try:
        while True:
            for ready in wait([batches, questions], TICK_S):
                connection = batches if ready is batches else questions
                try:
                    message = connection.recv()
                    if isinstance(message, Close):
                        return
                    if isinstance(message, Ask):
                        if not answer(connection, message):
                            return
                    elif isinstance(message, Batch):
                        logins = connection.recv_bytes()
                        if live is not None:
                            counted = live_logins.decode(logins, message.rejections)
                            live.observe_counted(counted, message.spans, message.processed_at)
                    elif live is not None and isinstance(message, Assigned):
                        live.assigned(message.partitions)
                except (EOFError, OSError):
                    return  # the parent is gone
            if live is not None:
                live.tick()
    finally:
        if reader is not None:
            reader.stop()
        if live is not None:
            live.close()
