"""``wallaroo-run``: real processes, real sockets on 127.0.0.1 only.

The applications live in tests/apps/wr_cli_app.py and are configured through their own command
line (``--input``, ``--output``, ...), which also checks that app args reach
``application_setup(args)``. Processes start through the ``wallaroo_run`` fixture
(tests/conftest.py, :class:`support.processes.Proc`) and are killed in teardown; ``listener``
gives TCP servers standing in for receivers (:class:`support.net.Listener`).
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.net import HOST, frame, free_port
from support.processes import STARTUP_RE, app_env, run_cli

RNG = random.Random(7002)


def random_words(n: int) -> list[str]:
    alphabet = "abcdefghijklmnopqrstuvwxyzäöü"
    return ["".join(RNG.choice(alphabet) for _ in range(RNG.randint(1, 12))) for _ in range(n)]


@pytest.fixture
def busy_port():
    """A port held by a listening socket nobody accepts on: binding it must fail."""
    sock = socket.socket()
    sock.bind((HOST, 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


def write_lines(path: Path, lines: list[str], trailing_newline: bool = True) -> None:
    path.write_bytes(("\n".join(lines) + ("\n" if trailing_newline else "")).encode("utf-8"))


def expected_upper(lines: list[str]) -> bytes:
    return "".join(f"{line.upper()}\n" for line in lines).encode("utf-8")


def send_frames(port: int, texts: list[str]) -> None:
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(b"".join(frame(t) for t in texts))


# ---------------------------------------------------------------------------------------------
# usage
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(tmp_path, flag):
    result = run_cli(flag, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert out.startswith("usage: wallaroo-run")
    for option in ("--app", "--application-module", "--in", "--out", "--on-error", "--dead-letter"):
        assert option in out


# ---------------------------------------------------------------------------------------------
# bounded runs end by themselves
# ---------------------------------------------------------------------------------------------

def test_file_source_to_file_sink_end_to_end(tmp_path):
    lines = random_words(200)
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    write_lines(src, lines)
    result = run_cli("--app", "wr_cli_app", "--input", str(src), "--output", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == expected_upper(lines)
    err = result.stderr.decode().splitlines()
    starts = [line for line in err if line.startswith("wallaroo: running")]
    assert len(starts) == 1, err
    m = STARTUP_RE.match(starts[0])
    assert m and m["app"] == "Upper Files"
    assert m["rest"] == f'source "lines" at file://{src} | sink file://{out}'


def test_stats_file_counts_every_message_and_its_latency(tmp_path):
    lines = random_words(300)
    src, out, stats_path = tmp_path / "in.txt", tmp_path / "out.txt", tmp_path / "stats.json"
    write_lines(src, lines)
    result = run_cli("--app", "wr_cli_app", "--input", str(src), "--output", str(out),
                     "--stats-file", str(stats_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    stats = json.loads(stats_path.read_text())
    assert stats["app"] == "Upper Files" and stats["ingested"] == len(lines)
    [sink] = stats["sinks"]
    assert sink["name"] == f"sink 0 (file://{out})" and sink["messages"] == len(lines)
    latency = sink["latency_ns"]
    assert latency["count"] == len(lines) and sum(latency["bins"].values()) == len(lines)
    assert 0 < latency["min"] <= sink["latency_summary_ns"]["p50"] <= latency["max"] < 10**10
    assert stats["peak_rss_bytes"] > 10**6 and stats["exit_code"] == 0


def test_stats_file_in_a_missing_directory_is_reported_not_fatal(tmp_path):
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    write_lines(src, ["a"])
    result = run_cli("--app", "wr_cli_app", "--input", str(src), "--output", str(out),
                     "--stats-file", str(tmp_path / "nowhere" / "stats.json"), cwd=tmp_path)
    assert result.returncode == 0
    assert b"cannot write --stats-file" in result.stderr and out.read_bytes() == b"A\n"


def test_file_without_trailing_newline_and_relative_paths(tmp_path):
    lines = random_words(5)
    write_lines(tmp_path / "in.txt", lines, trailing_newline=False)
    result = run_cli("--application-module", "wr_cli_app", "--input", "in.txt", "--output",
                     "out.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.txt").read_bytes() == expected_upper(lines)


def test_stdout_sink(tmp_path):
    lines = random_words(50)
    write_lines(tmp_path / "in.txt", lines)
    result = run_cli("--app", "wr_cli_app:to_stdout", "--input", "in.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_upper(lines)
    assert re.search(r'^wallaroo: running "Upper Stdout" \(pid \d+\) \| source "lines" at file://\S+ '
                     r'\| sink stdout$', result.stderr.decode(), re.M)


def test_encoder_returning_none_writes_nothing(tmp_path):
    lines = ["keep 1", "# drop", "keep 2", "#", "keep 3"]
    write_lines(tmp_path / "in.txt", lines)
    result = run_cli("--app", "wr_cli_app:encoder_drops", "--input", "in.txt", "--output",
                     "out.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.txt").read_text() == "".join(
        f"{line}\n" for line in lines if not line.startswith("#"))


def test_gen_source_ends_the_run(tmp_path):
    n = RNG.randint(5, 40)
    result = run_cli("--app", "wr_cli_app:gen_app", "--count", str(n), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == [str(i) for i in range(n, 0, -1)]


def test_app_attr_names_an_application_object(tmp_path):
    result = run_cli("--app", "wr_cli_app:APP", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"X\nY\nZ\n"
    assert '"Module Object"' in result.stderr.decode()


def test_app_attr_names_a_function(tmp_path):
    words = random_words(6)
    result = run_cli("--app", "wr_cli_app:iter_app", "--words", ",".join(words), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_upper(words)


def test_module_is_imported_from_the_current_directory(tmp_path):
    (tmp_path / "here_app.py").write_text(
        "import wallaroo\n"
        "def application_setup(args):\n"
        "    n = int(args[0])\n"
        "    p = (wallaroo.source('n', wallaroo.IterSourceConfig('n', range(n)))\n"
        "         .to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(lambda x: f'{x * x}\\n'))))\n"
        "    return wallaroo.build_application('Squares', p)\n")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    result = run_cli("--app", "here_app", "5", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"0\n1\n4\n9\n16\n"


def test_original_flags_are_accepted(tmp_path):
    """A one-worker cluster formed with the original flags, Pony and resilience flags too."""
    lines = random_words(10)
    write_lines(tmp_path / "in.txt", lines)
    result = run_cli(
        "--application-module", "wr_cli_app", "--input", "in.txt", "--output", "out.txt",
        "--ponythreads", "1", "--ponynoblock", "--ponypinasio",
        "--cluster-initializer", "--name", "w1", "--worker-count", "1",
        "--control", f"{HOST}:0", "--data", f"{HOST}:0", "--external", f"{HOST}:0",
        "--metrics", f"{HOST}:0", "--resilience-dir", str(tmp_path / "res"),
        "--time-between-checkpoints", "1000000000", "--log-rotation", "--stop-pause", "1",
        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.txt").read_bytes() == expected_upper(lines)
    assert "topology received: 1 workers (initializer)" in result.stderr.decode()


def test_engine_flags_are_not_app_args_and_argv_is_kept(tmp_path, wallaroo_run, listener):
    """Everything that is not an engine flag reaches application_setup(args), in order."""
    sink = listener()
    args_file = tmp_path / "args.json"
    app_args = ["--in", f"frames@{HOST}:0", "my-positional", "--my-option", "value",
                "--out", sink.address, "--kafka_source_topic", "t", "-z"]
    engine = ["--app", "wr_cli_app:tcp_app", "--workers", "1", "--ponythreads", "1",
              "--ponynoblock", "--on-error", "skip", "--name", "w1", "--no-progress",
              "--ponythreads=4", "--dead-letter", str(tmp_path / "dl.jsonl")]
    # interleave engine flags and app args
    argv = engine[:2] + app_args[:2] + engine[2:6] + app_args[2:5] + engine[6:] + app_args[5:]
    proc = wallaroo_run(*argv, env=app_env(WR_ARGS_FILE=str(args_file)))
    proc.startup()
    recorded = json.loads(args_file.read_text())
    assert recorded["args"] == app_args
    assert recorded["argv"] == ["wallaroo-run", *argv]
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0, proc.describe()


# ---------------------------------------------------------------------------------------------
# TCP: --in / --out overrides, startup line, signals
# ---------------------------------------------------------------------------------------------

def test_tcp_run_startup_line_and_sigterm(tmp_path, wallaroo_run, listener):
    sink = listener()
    proc = wallaroo_run("--app", "wr_cli_app:tcp_app", "--in", f"frames@{HOST}:0", "--out", sink.address)
    m, ports = proc.startup()
    assert m["app"] == "Upper TCP" and int(m["pid"]) == proc.popen.pid
    assert list(ports) == ["frames"] and ports["frames"] != 0
    assert m["rest"].endswith(f"| sink tcp://{sink.address}")
    words = random_words(300)
    send_frames(ports["frames"], words[:150])
    send_frames(ports["frames"], words[150:])
    want = expected_upper(words)
    sink.wait_for(lambda d: len(d) >= len(want))
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0, proc.describe()
    sink.wait_closed()
    assert sink.data == want


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_stream_delivers_what_was_produced(tmp_path, wallaroo_run, listener, signum):
    sink = listener()
    proc = wallaroo_run("--app", "wr_cli_app:tcp_app", "-i", f"frames@{HOST}:0", "-o", sink.address)
    _, ports = proc.startup()
    words = [f"w{i}" for i in range(200000)]
    want = expected_upper(words)
    stop = threading.Event()

    def feed(sock):  # keeps sending while the signal arrives
        try:
            for i in range(0, len(words), 200):
                if stop.is_set():
                    return
                sock.sendall(b"".join(frame(w) for w in words[i:i + 200]))
                time.sleep(0.002)
        except OSError:
            pass

    with socket.create_connection((HOST, ports["frames"]), timeout=5) as sock:
        feeder = threading.Thread(target=feed, args=(sock,), daemon=True)
        feeder.start()
        sink.wait_for(lambda d: d.count(b"\n") >= 1000)
        proc.signal(signum)
        code = proc.wait()
        stop.set()
        feeder.join(5)
    assert code == 0, proc.describe()
    sink.wait_closed()
    got = sink.data
    # everything produced arrived whole: a prefix of the expected output, cut at a line
    assert got.count(b"\n") >= 1000 and got.endswith(b"\n"), got[-200:]
    assert want.startswith(got), got[-200:]


def test_tcp_sink_connects_when_the_receiver_comes_up_later(tmp_path, wallaroo_run):
    port = free_port()  # free now; the receiver listens on it later
    proc = wallaroo_run("--app", "wr_cli_app:tcp_app", "--in", f"frames@{HOST}:0", "--out",
                 f"{HOST}:{port}")
    _, ports = proc.startup()
    words = random_words(20)
    send_frames(ports["frames"], words)
    proc.wait_stderr(re.compile(r"cannot connect"))
    time.sleep(0.3)
    receiver = socket.socket()
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    receiver.bind((HOST, port))
    receiver.listen(1)
    receiver.settimeout(5)
    try:
        conn, _ = receiver.accept()
        with conn:
            proc.signal(signal.SIGTERM)  # stop flushes what was waiting for the receiver
            conn.settimeout(5)
            got = b""
            while chunk := conn.recv(65536):
                got += chunk
    finally:
        receiver.close()
    assert proc.wait() == 0, proc.describe()
    assert got == expected_upper(words)


def test_in_overrides_named_sources_and_out_overrides_the_sink(tmp_path, wallaroo_run, listener, busy_port):
    sink = listener()
    # the app's own ports are busy: it can only start if --in replaced both sources
    env = app_env(WR_OWN_PORT=str(busy_port))
    proc = wallaroo_run("--app", "wr_cli_app:two_tcp_sources", "--in",
                 f"right@{HOST}:0,left@{HOST}:0", "--out", sink.address, env=env)
    m, ports = proc.startup()
    assert sorted(ports) == ["left", "right"]
    assert busy_port not in ports.values() and ports["left"] != ports["right"]
    left, right = random_words(40), random_words(30)
    send_frames(ports["left"], left)
    send_frames(ports["right"], right)
    want = expected_upper(left + right)
    sink.wait_for(lambda d: len(d) >= len(want))
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0, proc.describe()
    assert sorted(sink.data.splitlines()) == sorted(want.splitlines())


def test_out_addresses_follow_the_order_sinks_were_added(tmp_path, wallaroo_run, listener, busy_port):
    first, second = listener(), listener()
    env = app_env(WR_OWN_PORT=str(busy_port))
    proc = wallaroo_run("--app", "wr_cli_app:two_tcp_sinks", "--in", f"mixed@{HOST}:0",
                 "--out", f"{first.address},{second.address}", env=env)
    m, ports = proc.startup()
    assert m["rest"].endswith(f"| sink tcp://{first.address} | sink tcp://{second.address}")
    words = ["MiXeD", "Case", "wOrDs"]
    send_frames(ports["mixed"], words)
    first.wait_for(lambda d: d.count(b"\n") >= len(words))
    second.wait_for(lambda d: d.count(b"\n") >= len(words))
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0, proc.describe()
    assert first.data == "".join(f"{w.upper()}\n" for w in words).encode()   # sink A: upper
    assert second.data == "".join(f"{w.lower()}\n" for w in words).encode()  # sink B: lower


def test_sink_that_cannot_deliver_exits_1(tmp_path, wallaroo_run):
    # nothing listens on the sink's port: at stop the output cannot be delivered
    dead = free_port()
    proc = wallaroo_run("--app", "wr_cli_app:tcp_app", "--in", f"frames@{HOST}:0", "--out",
                 f"{HOST}:{dead}", "--flush-timeout", "0.3")
    _, ports = proc.startup()
    send_frames(ports["frames"], ["lost"])
    time.sleep(0.3)  # let the frame reach the sink's buffer
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 1, proc.describe()
    assert "not fully delivered" in proc.stderr


def test_second_signal_stops_waiting_for_the_sink(tmp_path, wallaroo_run):
    dead = free_port()
    # default flush timeout (30 s): only the second signal makes it give up at once
    proc = wallaroo_run("--app", "wr_cli_app:tcp_app", "--in", f"frames@{HOST}:0", "--out",
                 f"{HOST}:{dead}")
    _, ports = proc.startup()
    send_frames(ports["frames"], ["stuck"])
    proc.wait_stderr(re.compile("cannot connect"))
    time.sleep(0.3)  # let the frame reach the sink's buffer
    proc.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert proc.popen.poll() is None  # still waiting for the sink
    proc.signal(signal.SIGINT)
    assert proc.wait(3) == 1, proc.describe()
    assert "not fully delivered" in proc.stderr and f"{HOST}:{dead}" in proc.stderr


# ---------------------------------------------------------------------------------------------
# setup errors: exit 2 with one clear line
# ---------------------------------------------------------------------------------------------

def assert_usage_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    err = result.stderr.decode().strip()
    assert result.returncode == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith("wallaroo-run:"), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    assert result.stdout == b""
    return lines[0]


def test_missing_module(tmp_path):
    assert_usage_error(run_cli("--app", "wr_no_such_module_anywhere", cwd=tmp_path),
                       "wr_no_such_module_anywhere")


def test_module_without_application_setup(tmp_path):
    assert_usage_error(run_cli("--application-module", "wr_no_setup", cwd=tmp_path),
                       "wr_no_setup", "application_setup")


def test_missing_attribute(tmp_path):
    assert_usage_error(run_cli("--app", "wr_cli_app:nothing_here", cwd=tmp_path), "nothing_here")


def test_attribute_that_is_not_an_application(tmp_path):
    assert_usage_error(run_cli("--app", "wr_cli_app:not_an_app", cwd=tmp_path), "int")


def test_pipeline_without_sink(tmp_path):
    assert_usage_error(run_cli("--app", "wr_cli_app:no_sink", cwd=tmp_path), "to_sink")


@pytest.mark.parametrize("value", ["explode", "SKIP", ""])
def test_unknown_on_error_value(tmp_path, value):
    line = assert_usage_error(run_cli("--app", "wr_cli_app:APP", "--on-error", value, cwd=tmp_path),
                              "--on-error")
    assert "fail" in line and "skip" in line and "dead-letter" in line


def test_in_naming_an_unknown_source(tmp_path):
    assert_usage_error(run_cli("--app", "wr_cli_app:tcp_app", "--in", f"nope@{HOST}:0",
                               cwd=tmp_path), "nope", "frames")


def test_in_naming_a_source_that_is_not_tcp(tmp_path):
    assert_usage_error(run_cli("--app", "wr_cli_app:APP", "--in", f"fixed@{HOST}:0",
                               cwd=tmp_path), "fixed")


def test_no_application_named(tmp_path):
    assert_usage_error(run_cli("--in", f"x@{HOST}:0", cwd=tmp_path), "--app")


def test_source_that_cannot_listen(tmp_path, busy_port):
    assert_usage_error(run_cli("--app", "wr_cli_app:tcp_app", "--in", f"frames@{HOST}:{busy_port}",
                               cwd=tmp_path), str(busy_port))


def test_missing_input_file(tmp_path):
    assert_usage_error(run_cli("--app", "wr_cli_app", "--input", "absent.txt", "--output",
                               "out.txt", cwd=tmp_path), "absent.txt")


def test_unsupported_kafka_source(tmp_path):
    assert_usage_error(run_cli("--app", "wr_cli_app:kafka_app", cwd=tmp_path), "not supported")


def test_module_that_fails_while_loading(tmp_path):
    (tmp_path / "broken_app.py").write_text("import wr_definitely_missing_dependency\n")
    result = run_cli("--app", "broken_app", cwd=tmp_path)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "Traceback" in err and "wr_definitely_missing_dependency" in err
    assert err.strip().splitlines()[-1].startswith("wallaroo-run:")


def test_explain_prints_the_plan_and_runs_nothing(tmp_path):
    """--explain shows the fused chains and the exchange before the state computation, then
    exits 0 without opening any source or sink."""
    example = Path(__file__).resolve().parents[1] / "examples" / "word_count"
    result = run_cli("--app", "word_count", "--in", "Split and Count@127.0.0.1:0",
                     "--out", "127.0.0.1:9", "--explain", cwd=example)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0] == '"Word Count Application"'
    assert lines[1].startswith("source 'Split and Count' -> [")
    chain = lines[1].split("-> ", 1)[1]
    assert any(line.startswith(chain) and "-> exchange [count word]" in line for line in lines)
    assert lines[-1] == "[count word] -> tcp://127.0.0.1:9"
    assert b"wallaroo: running" not in result.stderr
