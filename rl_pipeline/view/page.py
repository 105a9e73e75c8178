"""`rlp view RUN_DIR`: one self-contained HTML page of a run (curves, samples by step, one prompt
across the run, recipe, report) that opens from a copied folder with no server and no network.

The page is assets/page.html with the run's data (view/data.py) embedded as JSON, and the
stylesheet, Chart.js (assets/chart.min.js, v3.9.1, MIT, as Debian's libjs-chart.js ships it) and
the page's script (assets/view.js) inlined. `serve` keeps rewriting it while a run goes and
serves the folder on localhost; the page reloads itself when the run has moved on.
"""

from __future__ import annotations

import functools
import hashlib
import html
import http.server
import json
import logging
import threading
from datetime import datetime, timezone
from pathlib import Path

from rl_pipeline.atomic import atomic_write_text
from rl_pipeline.view.data import log_files, run_data

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
PAGE_NAME = "view.html"
STAMP_NAME = "view.stamp"  # what the served page polls: changes when the run's data did


def page_html(data: dict) -> str:
    """The page with `data` embedded. Every "<" is written as the JSON escape \\u003c, so a
    `</script>` or `<!--` inside a completion cannot end or change the JSON block."""
    embedded = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    parts = {"__TITLE__": html.escape(data["run"]), "__CSS__": (ASSETS / "view.css").read_text(),
             "__CHARTJS__": (ASSETS / "chart.min.js").read_text(), "__VIEWJS__": (ASSETS / "view.js").read_text()}
    page = (ASSETS / "page.html").read_text()
    for marker, text in parts.items():
        page = page.replace(marker, text)
    return page.replace("__DATA__", embedded)  # last: the data may contain the other markers


def write_page(run_dir: str | Path, out: str | Path | None = None, serve: dict | None = None) -> Path:
    """Write the page of `run_dir` to `out` (default RUN_DIR/view.html); returns its path.
    `serve` ({"stamp", "every_s", "stamp_file"}) makes the page poll for a newer version."""
    run_dir = Path(run_dir)
    data = run_data(run_dir)
    data["written"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    data["serve"] = serve
    out = Path(out) if out is not None else run_dir / PAGE_NAME
    atomic_write_text(out, page_html(data))
    return out


def data_stamp(run_dir: Path) -> str:
    """Changes whenever a file the page reads changes (sizes and modification times)."""
    files = sorted([*log_files(run_dir), *run_dir.glob("report.md")])
    signature = "|".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    return hashlib.sha1(signature.encode()).hexdigest()[:16]


def serve(run_dir: str | Path, port: int = 8000, every_s: float = 10.0, stop: threading.Event | None = None) -> None:
    """Rewrite RUN_DIR/view.html whenever the run's files change (checked every `every_s` s) and
    serve RUN_DIR on http://127.0.0.1:PORT/ until `stop` is set (or Ctrl-C)."""
    run_dir = Path(run_dir)
    stop = stop or threading.Event()
    handler = functools.partial(_QuietHandler, directory=str(run_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, name="rlp-view", daemon=True)
    thread.start()
    print(f"serving http://127.0.0.1:{server.server_address[1]}/{PAGE_NAME} (Ctrl-C stops)", flush=True)
    last = None
    try:
        while not stop.is_set():
            stamp = data_stamp(run_dir)
            if stamp != last:
                write_page(run_dir, serve={"stamp": stamp, "every_s": every_s, "stamp_file": STAMP_NAME})
                atomic_write_text(run_dir / STAMP_NAME, stamp)  # after the page: a reload finds the new one
                last = stamp
            stop.wait(every_s)
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name): one debug line, not stderr
        log.debug("view: " + format, *args)
