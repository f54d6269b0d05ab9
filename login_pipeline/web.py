"""What the HTTP server shows of the live insights: the dashboard at `/`, `/api/insights` and `/api/alerts`.

Both API answers are JSON documents built at request time from thread-safe readers: the group's
merged closed windows and alerts (login_pipeline.live.GroupView, asked of the live insights'
process) and this instance's running totals (the reading the run loop published after its last
batch: whole batches, and no lock the run loop would wait on) and open windows. The dashboard is one
static page (login_pipeline/dashboard/: HTML, script, style; no third-party code, nothing fetched
from elsewhere) that polls the two API paths; every value from the data reaches it as text, never as markup.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import orjson

from login_pipeline.live import GroupReadings
from login_pipeline.status_server import Page
from login_pipeline.windows import iso

DASHBOARD = Path(__file__).resolve().parent / "dashboard"
JSON = "application/json"
# Served as files of their own, not inline: the Content-Security-Policy allows no inline script or style.
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("app.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("style.css", "text/css; charset=utf-8"),
}


def pages(this_instance: Callable[[], dict[str, Any]], view: GroupReadings) -> dict[str, Callable[[], Page]]:
    """The dashboard's files and the two API paths; `this_instance` returns the serving instance's part
    of /api/insights."""
    files = {path: Page((DASHBOARD / name).read_bytes(), content_type) for path, (name, content_type) in STATIC.items()}
    served: dict[str, Callable[[], Page]] = {path: partial(_same, page) for path, page in files.items()}
    return {
        **served,
        "/api/insights": lambda: _json(insights(this_instance(), view)),
        "/api/alerts": lambda: _json({"generated_at": iso(time.time()), "alerts": view.alerts()}),
    }


def insights(this_instance: dict[str, Any], view: GroupReadings) -> dict[str, Any]:
    return {
        "generated_at": iso(time.time()),
        "group": {"closed_windows": view.windows(), "totals": view.totals()},
        "this_instance": this_instance,
    }


def _same(page: Page) -> Page:
    return page


def _json(document: dict[str, Any]) -> Page:
    return Page(orjson.dumps(document, option=orjson.OPT_INDENT_2), JSON)
