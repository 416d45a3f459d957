"""The benchmark runner (benchmarks/compare.py) runs end to end, and its checks catch a wrong
result; the asv report's CDN assets are rewritten to vendored copies."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import offline_html  # noqa: E402
from benchmarks.workloads import WORKLOADS, WorkloadMismatch, frame  # noqa: E402


def run_compare(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "benchmarks.compare", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def table_rows(stdout: str) -> set[tuple[str, str]]:
    """(workload, mode) of every result row the runner printed."""
    rows = set()
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in WORKLOADS and parts[1] in ("inprocess", "testing",
                                                                        "files", "tcp"):
            rows.add((parts[0], parts[1]))
    return rows


def test_runner_smoke_prints_a_row_per_workload_and_mode(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = run_compare("--smoke", "--rounds", "1", "--scale", "0.005", "--state-keys", "1000",
                       "--modes", "inprocess,testing,files", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {(w, m) for w in WORKLOADS for m in ("inprocess", "testing", "files")}
    assert table_rows(done.stdout) == expected, done.stdout
    figures = json.loads(out.read_text())
    assert {(r["workload"], r["mode"]) for r in figures["rows"]} == expected
    assert all(r["engine_rate"] > 0 and r["plain_rate"] > 0 for r in figures["rows"])
    assert {s["workload"] for s in figures["state"]} == {
        name for name, w in WORKLOADS.items() if w.keyed_inputs is not None}
    assert "state per key" in done.stdout


def test_runner_smoke_over_tcp() -> None:
    done = run_compare("--smoke", "--rounds", "1", "--scale", "0.005", "--state-keys", "0",
                       "--modes", "tcp", "word_count", "market_spread")
    assert done.returncode == 0, done.stderr[-3000:]
    assert table_rows(done.stdout) == {("word_count", "tcp"), ("market_spread", "tcp")}


def test_runner_smoke_scaling_checks_every_worker_count(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = run_compare("--smoke", "--rounds", "1", "--scale", "0.005", "--state-keys", "0",
                       "--modes", "none", "--scaling", "1,2", "--scaling-workloads",
                       "word_count,stateless_chain", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())["scaling"]
    assert [(r["workload"], r["workers"]) for r in figures] == [
        ("word_count", 1), ("word_count", 2), ("stateless_chain", 1), ("stateless_chain", 2)]
    assert all(r["rate"] > 0 and r["processing_s"][0] > 0 for r in figures)
    assert figures[0]["speedup"] == 1.0


def test_runner_smoke_resilience_checks_output_and_counts_checkpoints(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = run_compare("--smoke", "--rounds", "1", "--scale", "0.02", "--state-keys", "0",
                       "--modes", "none", "--resilience", "0.05", "--resilience-workloads",
                       "keyed_sum", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    [figure] = json.loads(out.read_text())["resilience"]
    assert figure["workload"] == "keyed_sum" and figure["off_rate"] > 0 and figure["on_rate"] > 0
    assert figure["checkpoints"] >= 1 and figure["checkpoint_bytes"] > 0


def test_runner_smoke_metrics_cost_runs_both_sides_and_checks_output(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = run_compare("--smoke", "--rounds", "1", "--scale", "0.02", "--state-keys", "0",
                       "--modes", "none", "--metrics-cost", "word_count", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    [figure] = json.loads(out.read_text())["metrics_cost"]
    assert figure["workload"] == "word_count" and len(figure["on_s"]) == len(figure["off_s"]) == 1
    assert figure["ratio"] == pytest.approx(figure["on_rate"] / figure["off_rate"])
    assert "# metrics:" in done.stdout


def test_recovery_benchmark_measures_a_kill_and_a_restore() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.recovery", "--keys", "20000",
                           "--rounds", "1", "--timeout", "60"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "kill -9 to processing" in done.stdout and "(20,000 keys)" in done.stdout, done.stdout


def test_runner_refuses_fewer_than_three_rounds_without_smoke() -> None:
    done = run_compare("--rounds", "1", "word_count")
    assert done.returncode == 2
    assert "at least 3" in done.stderr


def test_a_wrong_engine_output_fails_loudly() -> None:
    w = WORKLOADS["word_count"]
    payloads = w.make_payloads(20)
    inputs = w.decode_payloads(payloads)
    reference = w.plain_wire_bytes(w.wire(payloads))
    w.check_bytes(reference, reference, inputs)
    wrong = reference.replace(b" => 1\n", b" => 2\n", 1)
    with pytest.raises(WorkloadMismatch, match="differs"):
        w.check_bytes(wrong, reference, inputs)
    with pytest.raises(WorkloadMismatch, match="emitted"):
        w.check_bytes(reference[:reference.rindex(b"\n", 0, -1) + 1], reference, inputs)


def test_unordered_outputs_compare_as_multisets() -> None:
    w = WORKLOADS["windowed_sum"]
    payloads = w.make_payloads(3000)
    inputs = w.decode_payloads(payloads)
    reference = w.plain_wire_bytes(w.wire(payloads))
    lines = reference.splitlines(keepends=True)
    w.check_bytes(b"".join(reversed(lines)), reference, inputs)
    with pytest.raises(WorkloadMismatch, match="multisets"):
        w.check_bytes(b"".join(lines[1:]), reference, inputs)


def test_market_spread_check_accepts_any_interleaving_but_not_a_wrong_quote() -> None:
    w = WORKLOADS["market_spread"]
    inputs = w.inputs(4000)
    plain = w.plain_outputs(inputs)
    w.check(plain, plain, inputs)
    # every quote before any order: another valid interleaving, other results
    other = [r for chunk in w.plain(iter([inputs["Market Data"], inputs["Orders"]]))
             for r in chunk]
    assert other != plain
    w.check(other, plain, inputs)
    result = other[len(other) // 2]
    result.bid += 0.5  # a bid no quote of the symbol had
    with pytest.raises(WorkloadMismatch, match="no quote"):
        w.check(other, plain, inputs)


def test_python_frame_cutter_matches_the_wire_format() -> None:
    from benchmarks.workloads import PyFrames

    data = b"".join(frame(bytes([i]) * i) for i in range(50))
    cutter = PyFrames()
    got = []
    for i in range(0, len(data), 7):
        got += cutter.feed(data[i:i + 7])
    assert got == [bytes([i]) * i for i in range(50)]


def fake_debian_files(root: Path) -> dict:
    """Stand-ins for the Debian packages' files (the test checks the rewriting, not them)."""
    files = {}
    for name in offline_html.FILES:
        path = root / "usr-share-javascript" / name
        if name.endswith("fonts"):
            path.mkdir(parents=True)
            (path / "glyphicons.woff").write_bytes(b"font")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"/* {name} */")
        files[name] = path
    return files


def test_offline_html_rewrites_cdn_assets(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(offline_html, "FILES", fake_debian_files(tmp_path))
    report = tmp_path / "html"
    report.mkdir()
    html = report / "index.html"
    html.write_text(
        '<html><head>\n'
        '<script src="https://code.jquery.com/jquery-3.3.1.min.js" integrity="sha256-x" '
        'crossorigin="anonymous" onerror="f()"></script>\n'
        '<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/'
        'bootstrap.min.css" integrity="sha256-y" crossorigin="anonymous">\n'
        '<script language="javascript" src="jquery.flot.axislabels.js"></script>\n'
        '</head><body><a href="https://github.com/airspeed-velocity/asv/">asv</a></body></html>\n')
    assert offline_html.main([str(report)]) == 0
    text = html.read_text()
    assert 'src="vendor/jquery.min.js"' in text
    assert 'href="vendor/bootstrap/css/bootstrap.min.css"' in text
    assert 'src="vendor/in-flot-pack.js"' in text and "flot4-legend.css" in text
    assert "integrity" not in text and "cdn.jsdelivr" not in text
    assert (report / "vendor" / "jquery.min.js").read_text() == "/* jquery.min.js */"
    assert (report / "vendor" / "bootstrap" / "fonts" / "glyphicons.woff").exists()
    assert "orderBars" in (report / "vendor" / "flot-orderbars-stand-in.js").read_text()


def test_offline_html_says_which_debian_files_are_missing(tmp_path: Path, monkeypatch,
                                                          capsys) -> None:
    monkeypatch.setattr(offline_html, "FILES", {"jquery.min.js": tmp_path / "nothing.js"})
    (tmp_path / "index.html").write_text("<html></html>")
    assert offline_html.main([str(tmp_path)]) == 1
    assert "libjs-jquery" in capsys.readouterr().err


def test_offline_html_fails_on_an_unknown_cdn_asset(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(offline_html, "FILES", fake_debian_files(tmp_path))
    (tmp_path / "index.html").write_text('<script src="https://cdn.example/x.js"></script>')
    assert offline_html.main([str(tmp_path)]) == 1
    assert "https://cdn.example/x.js" in capsys.readouterr().err
