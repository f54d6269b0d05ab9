"""The dashboard in a real browser: headless Chromium loads `/` of a processor running on real brokers,
waits for the charts to show the events fed, checks the numbers on the page against what was sent,
and saves a screenshot (dashboard.png in the test's directory; the README shows one).

Needs Debian's `chromium` package (`apt-get install chromium`; CI's .ci/run installs it). Skipped,
saying so, only where no Chromium is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.kafka_helpers import Topics, wait_until
from tests.test_live_insights_kafka import crafted_stream, group_totals, send, start_group

BROWSER = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None
)
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed: apt-get install chromium")
# Virtual time runs the page's timers (a refresh every 2 s) without waiting for them in real time;
# the fetches themselves are real.
BROWSER_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=8000"]


class TextById(HTMLParser):
    """The text inside every element with an id, from Chromium's dump of the live DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag, attrs) -> None:
        self._open.append(dict(attrs).get("id"))

    def handle_endtag(self, tag) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data) -> None:
        for element in self._open:
            if element:
                self.text[element] = self.text.get(element, "") + data


def browse(url: str, home: Path, *extra: str) -> str:
    """Chromium's output for `url`. Its profile, crash reports and caches go under `home`: Chromium
    writes them below $HOME and the XDG directories otherwise, and a test leaves the user's untouched."""
    home.mkdir(exist_ok=True)
    environment = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_CACHE_HOME": str(home / "cache"),
    }
    command = [BROWSER, *BROWSER_ARGS, f"--user-data-dir={home / 'profile'}", *extra, url]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120, check=True).stdout


def number(text: str) -> int:
    return int(re.sub(r"[^0-9]", "", text))


@needs_browser
def test_the_dashboard_shows_what_was_fed(plain_kafka, tmp_path):
    topics = Topics.create(plain_kafka, partitions=3)
    [(processor, port)] = start_group(plain_kafka, topics, tmp_path, "kafka-python", instances=1)
    try:
        stream = crafted_stream(time.time())
        send(plain_kafka.input, topics.input, stream.records)
        wait_until(lambda: (group_totals(port) or {}).get("messages") == stream.messages, 90, message="windows closed")
        url = f"http://127.0.0.1:{port}/"
        page = TextById()
        page.feed(browse(url, tmp_path / "browser-home", "--dump-dom"))
        shown = page.text
        assert number(shown["group-logins"]) == stream.logins
        assert number(shown["group-rejected"]) == stream.rejected
        assert abs(number(shown["group-users"]) - stream.users) <= 0.05 * stream.users
        assert number(shown["alert-count"]) == 2
        assert number(shown["instance-processed"]) == stream.messages
        assert "credential_stuffing" in shown["alerts"] and "locale_hopping" in shown["alerts"]
        assert "malformed_json" in shown["outcomes"]
        assert "ios" in shown["device-types"] and "pt-BR".upper() in shown["locales"].upper()
        assert shown["status"].startswith("updated")
        screenshot = tmp_path / "dashboard.png"
        browse(url, tmp_path / "browser-home", f"--screenshot={screenshot}", "--window-size=1440,1100")
        assert screenshot.stat().st_size > 10_000
        print(f"dashboard screenshot: {screenshot}")
    finally:
        assert processor.stop() == 0, processor.stderr[-2000:]
