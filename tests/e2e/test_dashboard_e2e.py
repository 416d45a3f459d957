"""End-to-end tests of the live metrics dashboard, as a user sees it: a real ``wallaroo-run
--metrics HOST:PORT`` fed continuously, its page loaded in headless Chromium.

The app (tests/apps/wr_metrics_dash_app.py) is TCP source -> decoder -> ``parse reading`` ->
key_by -> ``running max`` (state) -> TCP sink, its output taken by ``wallaroo receive``. A
sender thread keeps writing readings to the source for as long as the browser watches. The
page (wallaroo/metrics/static/) must then show, with no console error, no uncaught exception
and no failed load:

- every node name of /api/graph, and a non-zero rate (``data-rate-for`` / ``data-rate-value``)
  for every stage and pipeline of /api/metrics while data flows,
- "Resilience off" in the checkpoints panel (the run has no --run-with-resilience),
- with ``--workers 2``: a row for each worker and the exchange edge of the graph.

A screenshot of each page is saved in $WALLAROO_TEST_ARTIFACTS, or tests/artifacts/. The tests
are skipped only when Chromium is missing and cannot be installed (not root).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness import ROOT, App, Harness
from support.chromium import Browser, ensure_chromium
from support.net import HOST, frame, free_ports
from support.processes import app_env

# the fixtures (an apt-get install of chromium, at worst) are outside the limit
pytestmark = pytest.mark.timeout(90, func_only=True)

PAGE_TIMEOUT = 20.0      # seconds for the page to show every stage moving
SERVER_TIMEOUT = 10.0    # seconds for the metrics server to answer once the run has started
SENSORS = 50             # distinct keys, spread over the workers by key_by
BATCH = 40               # readings per write; a write every 20 ms: ~2,000 readings/s


@pytest.fixture(scope="module")
def chromium() -> str:
    path = ensure_chromium()
    if path is None:
        pytest.skip("headless Chromium is needed: /usr/bin/chromium is missing and cannot be "
                    "installed here (not root; as root, apt-get installs Debian's chromium)")
    return path


def artifacts_dir() -> Path:
    """Where screenshots go: $WALLAROO_TEST_ARTIFACTS, else tests/artifacts/ (created)."""
    folder = Path(os.environ.get("WALLAROO_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Feeder(threading.Thread):
    """Writes framed ``SENSOR,VALUE`` readings to a TCP source until :meth:`stop`."""

    def __init__(self, port: int) -> None:
        super().__init__(name="dashboard-feeder", daemon=True)
        self.sock = socket.create_connection((HOST, port), timeout=5)
        self.stopped = threading.Event()
        self.sent = 0
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                batch = b"".join(frame(f"sensor-{(self.sent + i) % SENSORS},{(self.sent + i) % 997}")
                                 for i in range(BATCH))
                self.sock.sendall(batch)
                self.sent += BATCH
                self.stopped.wait(0.02)
        except OSError as exc:
            self.error = exc

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)
        self.sock.close()
        assert self.error is None, f"sending to the source failed after {self.sent} readings: {self.error!r}"
        assert self.sent > 0


def get_json(url: str, app: App, timeout: float = SERVER_TIMEOUT):
    """GET a JSON document, retrying until the server answers (``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                assert response.headers.get_content_type() == "application/json", response.headers
                return json.load(response)
        except (urllib.error.URLError, ConnectionError) as exc:
            assert app.proc.poll() is None, f"the app ended\n{app.proc.describe()}"
            assert time.monotonic() < deadline, f"{url}: {exc}\n{app.proc.describe()}"
            time.sleep(0.1)


def start_run(harness: Harness, workers: int) -> tuple[App, str]:
    """Start the app with ``--metrics`` on a free port; the app and the dashboard's URL."""
    receiver = harness.receiver(expect=None)
    metrics_port, = free_ports(1)
    extra = ["--metrics", f"{HOST}:{metrics_port}"]
    if workers > 1:
        extra += ["--workers", str(workers)]
    app = harness.app("", "wr_metrics_dash_app", ["readings"], receiver.port, cwd=harness.tmp_path,
                      env=app_env(), extra_engine_args=extra)
    return app, f"http://{HOST}:{metrics_port}"


# JS: {id: [data-rate-value, ...]} of every [data-rate-for] element of the page
RATES_JS = """(() => {
  const rates = {};
  for (const node of document.querySelectorAll("[data-rate-for]")) {
    (rates[node.dataset.rateFor] ??= []).push(Number(node.dataset.rateValue));
  }
  return rates;
})()"""


def wait_all_moving(browser: Browser, ids: list[str], app: App) -> dict:
    """Poll the page until each of ``ids`` has a rate above 0; the rates then."""
    deadline = time.monotonic() + PAGE_TIMEOUT
    while True:
        rates = browser.evaluate(RATES_JS)
        still = [ident for ident in ids if not any(value > 0 for value in rates.get(ident, []))]
        if not still:
            return rates
        assert app.proc.poll() is None, f"the app ended\n{app.proc.describe()}"
        if time.monotonic() >= deadline:
            status = browser.evaluate("document.getElementById('status').innerText")
            raise AssertionError(f"after {PAGE_TIMEOUT:g} s the page shows no throughput for {still}; "
                                 f"its rates: {rates}\nstatus: {status}\nproblems: {browser.problems()}")
        time.sleep(0.25)


def check_page(browser: Browser, url: str, app: App) -> tuple[dict, dict]:
    """Load the dashboard, wait for data, check what every run must show; (graph, metrics)."""
    metrics = get_json(f"{url}/api/metrics", app)
    browser.navigate(f"{url}/")
    ids = [stage["id"] for stage in metrics["stages"]] + [pipe["id"] for pipe in metrics["pipelines"]]
    assert ids, f"/api/metrics lists no stage nor pipeline: {metrics}"
    wait_all_moving(browser, ids, app)
    # every row's throughput chart rises once /api/history has a second with data
    browser.wait_for("""(() => {
        const charts = [...document.querySelectorAll("tr.row .spark")];
        return charts.length > 0 && charts.every((chart) => Number(chart.dataset.max) > 0);
    })()""", timeout=PAGE_TIMEOUT)
    graph = get_json(f"{url}/api/graph", app)   # now that the workers have reported
    # every pipeline and every timed stage shows its five percentiles and its latency bins
    timed = [pipe["id"] for pipe in metrics["pipelines"]] + [
        stage["id"] for stage in metrics["stages"] if stage["kind"] != "source"]
    filled = browser.wait_for(f"""(() => {{
        const rows = {json.dumps(timed)}.map((id) => document.getElementById("row-" + id));
        return rows.every((row) => row
            && [...row.querySelectorAll("td.num")].slice(2, 7)
                   .every((cell) => /^[0-9.,]+\\s*(ns|µs|ms|s)$/.test(cell.innerText.trim()))
            && row.querySelectorAll("svg.bins rect").length > 0);
    }})()""", timeout=PAGE_TIMEOUT)
    assert filled, "percentiles or latency bins are missing from a row"

    problems = browser.problems()
    assert not problems, "the page had problems:\n" + "\n".join(problems)
    errors = browser.evaluate("document.getElementById('errors').innerText")
    assert not errors, f"the page caught errors:\n{errors}"
    text = browser.evaluate("document.body.innerText")
    missing = [node["name"] for node in graph["nodes"] if node["name"] not in text]
    assert not missing, f"the page does not show {missing}; its text:\n{text}"
    assert graph["app"] in text, text
    checkpoints = browser.evaluate("document.getElementById('checkpoints').innerText")
    assert "resilience off" in checkpoints.lower(), checkpoints
    return graph, metrics


def save_screenshot(browser: Browser, name: str) -> Path:
    path = artifacts_dir() / name
    path.write_bytes(browser.screenshot())
    print(f"dashboard screenshot: {path}")
    return path


def stop_run(app: App, feeder: Feeder) -> None:
    """Stop feeding, then SIGTERM the app: it must exit 0."""
    feeder.stop()
    code = app.stop()
    assert code == 0, f"wallaroo-run exited with {code}\n{app.proc.describe()}"


def test_dashboard_shows_a_live_run(harness, chromium):
    app, url = start_run(harness, workers=1)
    feeder = Feeder(app.sources["readings"])
    feeder.start()
    with Browser(chromium) as browser:
        graph, _ = check_page(browser, url, app)
        assert [node["kind"] for node in graph["nodes"]] == ["source", "map", "key_by", "state", "sink"]
        status = browser.evaluate("document.getElementById('status').innerText")
        assert status.strip() == "connected", status
        save_screenshot(browser, "dashboard.png")
    stop_run(app, feeder)


def test_dashboard_shows_two_workers(harness, chromium):
    app, url = start_run(harness, workers=2)
    feeder = Feeder(app.sources["readings"])
    feeder.start()
    with Browser(chromium) as browser:
        graph, _ = check_page(browser, url, app)
        assert len(graph["workers"]) == 2, graph
        shown = browser.wait_for("""(() => {
            const names = [...document.querySelectorAll("#workers-body tr[data-worker]")]
                .map((row) => row.dataset.worker);
            return names.length >= 2 && names;
        })()""", timeout=PAGE_TIMEOUT)
        assert sorted(shown) == sorted(graph["workers"]), shown
        text = browser.evaluate("document.getElementById('workers-panel').innerText")
        assert all(name in text for name in shown), text
        exchanges = [edge for edge in graph["edges"] if edge["exchange"]]
        assert exchanges, f"key_by on 2 workers makes no exchange edge: {graph['edges']}"
        drawn = browser.evaluate("""[...document.querySelectorAll("#graph .edge.exchange")]
            .map((edge) => [edge.dataset.from, edge.dataset.to, edge.textContent])""")
        assert sorted(drawn) == sorted([edge["from"], edge["to"], "exchange"] for edge in exchanges), drawn
        assert not browser.problems(), "\n".join(browser.problems())
        save_screenshot(browser, "dashboard-2-workers.png")
    stop_run(app, feeder)
