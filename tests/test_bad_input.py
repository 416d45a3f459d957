"""Bad input and failing user code (DESIGN.md "Errors"): real ``wallaroo-run`` processes and real
sockets on 127.0.0.1.

Bad input (an oversized or truncated frame, a decoder or key extractor that raises) never stops
the engine: it is counted, logged once per stage and kind, and dead-lettered when a file is set.
A computation or encoder that raises follows ``--on-error`` (fail: exit 1 with a traceback naming
stage and input; skip; dead-letter).

Setup errors (missing module, no application_setup, no sink, ...: exit 2 with one line) are
tested in one place, tests/test_cli.py.

The applications are in tests/apps/wr_bad_apps.py. Processes and sockets come from tests/support
and the fixtures of tests/conftest.py (``wallaroo_run``, ``listener``).
"""
from __future__ import annotations

import base64
import json
import re
import signal
import socket
import struct
import time
from pathlib import Path

import pytest

from support.net import HOST, frame
from support.processes import run_cli

SUMMARY = "failure(s)"


def recv_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Read until the peer closes (EOF) or resets; fail if it stays open."""
    sock.settimeout(timeout)
    got = b""
    try:
        while chunk := sock.recv(4096):
            got += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        raise AssertionError("the engine did not close the connection") from None
    return got


def lines_of(data: bytes) -> list[str]:
    return data.decode("utf-8").splitlines()


def matching(lines: list[str], *needles: str) -> list[str]:
    return [line for line in lines if all(n in line for n in needles)]


def start_tcp(wallaroo_run, listener, app: str, source: str, *extra: str):
    sink = listener()
    proc = wallaroo_run("--app", f"wr_bad_apps:{app}", "--in", f"{source}@{HOST}:0",
                        "--out", sink.address, *extra)
    _, ports = proc.startup()
    return proc, sink, ports[source]


def stop(proc) -> None:
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0, proc.describe()


# ---------------------------------------------------------------------------------------------
# frames over the size limit, truncated frames
# ---------------------------------------------------------------------------------------------

def test_oversized_frame_closes_only_that_connection(wallaroo_run, listener):
    max_size = 64
    proc, sink, port = start_tcp(wallaroo_run, listener, "capped", "capped",
                                 "--max-size", str(max_size))
    with socket.create_connection((HOST, port)) as other, \
            socket.create_connection((HOST, port)) as bad:
        other_frame = frame("other goes on")
        other.sendall(other_frame[:6])  # this connection is in the middle of a frame
        # exactly max_size is fine, and so is an empty payload
        bad.sendall(frame("before") + frame("x" * max_size) + frame(""))
        sink.wait_for(lambda d: d.count(b"\n") >= 3)
        # a header announcing max_size + 1: the engine must not wait for the payload
        bad.sendall(struct.pack(">I", max_size + 1) + b"y" * 10)
        recv_until_closed(bad)
        assert proc.popen.poll() is None, proc.describe()
        other.sendall(other_frame[6:])
        sink.wait_for(lambda d: b"other goes on\n" in d)
    # and new connections are still accepted
    with socket.create_connection((HOST, port)) as again:
        again.sendall(frame("new connection"))
        sink.wait_for(lambda d: b"new connection\n" in d)
    assert lines_of(sink.data) == ["before", "x" * max_size, "", "other goes on", "new connection"]
    # the warning may reach stderr a moment after the connection closes: wait for it
    why = proc.wait_stderr(r"'capped'.*max_size").string
    assert f"{max_size + 1} bytes" in why, proc.stderr
    stop(proc)
    assert matching(proc.stderr_lines, "'capped'", "1 frame", SUMMARY), proc.stderr


def test_oversized_frame_is_reported_once(wallaroo_run, listener):
    # Regression test for a fixed bug (the old behaviour): after closing the connection for an oversized frame, connection_lost finds the
    # oversized frame's bytes still in the FrameReader buffer and reports them again as a
    # truncated frame ("ended inside a frame; 37 bytes of an unfinished frame were dropped"):
    # one bad frame is logged, counted and dead-lettered twice, under a wrong second reason.
    proc, sink, port = start_tcp(wallaroo_run, listener, "capped", "capped", "--max-size", "32")
    with socket.create_connection((HOST, port)) as conn:
        conn.sendall(struct.pack(">I", 33) + b"o" * 33)
        recv_until_closed(conn)
    proc.wait_stderr(re.compile("longer than max_size"))
    stop(proc)
    assert matching(proc.stderr_lines, "'capped'", "1 frame", SUMMARY), proc.stderr
    assert not matching(proc.stderr_lines, "unfinished frame"), proc.stderr
    assert not matching(proc.stderr_lines, "truncated frame"), proc.stderr


def test_frames_before_an_oversized_one_in_the_same_packet_are_processed(wallaroo_run, listener):
    # Regression test for a fixed bug (the old behaviour): FrameReader.feed raises FrameTooLarge and drops the list of frames it had
    # already cut from the same chunk, so complete, valid frames that arrived in the same read
    # as an oversized header never reach the app (connections.tcp._FrameProtocol.data_received).
    proc, sink, port = start_tcp(wallaroo_run, listener, "capped", "capped", "--max-size", "16")
    with socket.create_connection((HOST, port)) as conn:
        conn.sendall(frame("first") + frame("second") + struct.pack(">I", 17) + b"z" * 17)
        recv_until_closed(conn)
    with socket.create_connection((HOST, port)) as conn:
        conn.sendall(frame("marker"))
    sink.wait_for(lambda d: b"marker\n" in d)
    stop(proc)
    assert lines_of(sink.data) == ["first", "second", "marker"]


def test_truncated_frame_at_disconnect(wallaroo_run, listener):
    proc, sink, port = start_tcp(wallaroo_run, listener, "capped", "capped", "--max-size", "1000")
    words = ["one", "two", "three"]
    with socket.create_connection((HOST, port)) as conn:
        # three whole frames, then a header for 10 bytes and only 4 of them
        conn.sendall(b"".join(frame(w) for w in words) + struct.pack(">I", 10) + b"half")
    logged = proc.wait_stderr(re.compile(r"unfinished frame"))
    assert "'capped'" in logged.string and "8 bytes" in logged.string  # 4 header + 4 payload
    sink.wait_for(lambda d: d.count(b"\n") >= 3)
    assert proc.popen.poll() is None
    with socket.create_connection((HOST, port)) as conn:
        conn.sendall(frame("after"))
    sink.wait_for(lambda d: b"after\n" in d)
    stop(proc)
    assert lines_of(sink.data) == words + ["after"]
    assert matching(proc.stderr_lines, "'capped'", "1 truncated frame", SUMMARY), proc.stderr


def test_bad_frames_go_to_the_dead_letter_file(wallaroo_run, listener, tmp_path):
    # Regression test for a fixed bug (the old behaviour): also fails because an oversized frame is reported twice (see
    # test_oversized_frame_is_reported_once): the dead-letter file gets a second, bogus
    # "truncated_frame" record for the connection the engine itself closed.
    dead = tmp_path / "frames.jsonl"
    proc, sink, port = start_tcp(wallaroo_run, listener, "capped", "capped", "--max-size", "32",
                                 "--dead-letter", str(dead))
    oversized = struct.pack(">I", 33) + b"o" * 33
    with socket.create_connection((HOST, port)) as conn:
        conn.sendall(oversized)
        recv_until_closed(conn)
    with socket.create_connection((HOST, port)) as conn:
        conn.sendall(frame("ok") + struct.pack(">I", 5) + b"ab")
    proc.wait_stderr(re.compile("unfinished frame"))
    sink.wait_for(lambda d: b"ok\n" in d)
    stop(proc)
    records = [json.loads(r) for r in dead.read_text().splitlines()]
    assert [(r["stage"], r["kind"]) for r in records] == [("capped", "frame"),
                                                           ("capped", "truncated_frame")]
    assert oversized.startswith(base64.b64decode(records[0]["input_base64"]))
    assert "33" in records[0]["error"] and "max_size=32" in records[0]["error"]
    assert "unfinished frame" in records[1]["error"]


def test_header_split_across_packets_is_not_truncation(wallaroo_run, listener):
    proc, sink, port = start_tcp(wallaroo_run, listener, "capped", "capped")
    data = frame("split") + frame("frames")
    with socket.create_connection((HOST, port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            conn.sendall(data[i:i + 1])
            time.sleep(0.001)
    sink.wait_for(lambda d: d.count(b"\n") >= 2)
    stop(proc)
    assert lines_of(sink.data) == ["split", "frames"]
    assert not matching(proc.stderr_lines, "unfinished"), proc.stderr


# ---------------------------------------------------------------------------------------------
# decoders and key extractors that raise: bad input, counted and skipped
# ---------------------------------------------------------------------------------------------

def _decoder_payloads():
    payloads = []
    for i in range(30):
        payloads.append(f"bad {i}".encode() if i % 4 == 1 else f"good {i}".encode())
        if i % 7 == 3:
            payloads.append(b"skip")  # the decoder returns None: dropped, not a failure
    payloads.append(b"bad\xff\x00 binary")
    return payloads


@pytest.mark.parametrize("dead_letter", [False, True])
def test_decoder_that_raises(wallaroo_run, listener, tmp_path, dead_letter):
    path = tmp_path / "dead.jsonl"
    extra = ("--dead-letter", str(path)) if dead_letter else ()
    proc, sink, port = start_tcp(wallaroo_run, listener, "bad_decoder", "raw", *extra)
    payloads = _decoder_payloads()
    bad = [p for p in payloads if p.startswith(b"bad")]
    good = [p.decode() for p in payloads if not p.startswith(b"bad") and p != b"skip"]
    with socket.create_connection((HOST, port)) as conn:
        for p in payloads:  # several packets: failures in many batches
            conn.sendall(struct.pack(">I", len(p)) + p)
            time.sleep(0.001)
    sink.wait_for(lambda d: d.count(b"\n") >= len(good))
    stop(proc)  # the default policy (fail) does not apply to bad input: exit 0
    assert lines_of(sink.data) == good
    logged = matching(proc.stderr_lines, "raw: decoder 'picky_decoder'", "ValueError")
    assert len(logged) == 1, proc.stderr  # logged once, then counted
    assert "bad 1" in logged[0]  # with the (truncated) input
    assert matching(proc.stderr_lines, "raw: decoder 'picky_decoder'", f"{len(bad)} decoder", SUMMARY), proc.stderr
    if dead_letter:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(records) == len(bad)
        assert [base64.b64decode(r["input_base64"]) for r in records] == bad
        for r, payload in zip(records, bad):
            assert r["stage"] == "raw: decoder 'picky_decoder'" and r["kind"] == "decoder"
            assert r["error"].startswith("ValueError") and "cannot decode" in r["error"]
            assert r["input"] == repr(payload)


@pytest.mark.parametrize("dead_letter", [False, True])
def test_key_extractor_that_raises_or_returns_a_float(tmp_path, dead_letter):
    lines = ["a:1", "boom 1", "b:1", "float 1", "a:2", "boom 2", "c:1", "a:3", "float 2", "b:2"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    extra = ["--dead-letter", "dead.jsonl"] if dead_letter else []
    result = run_cli("--app", "wr_bad_apps:bad_keys", "--input", "in.txt", "--output", "out.txt",
                     *extra, cwd=tmp_path)
    err = result.stderr.decode().splitlines()
    assert result.returncode == 0, err
    good = [line for line in lines if ":" in line]
    counts: dict[str, int] = {}
    expected = []
    for line in good:
        key = line.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
        expected.append(f"{line} #{counts[key]}")
    assert sorted((tmp_path / "out.txt").read_text().splitlines()) == sorted(expected)
    bad = [line for line in lines if ":" not in line]
    assert len(matching(err, "'key_of'", "failed")) == 1, err
    assert matching(err, "'key_of'", f"{len(bad)} key extractor", SUMMARY), err
    if dead_letter:
        records = [json.loads(r) for r in (tmp_path / "dead.jsonl").read_text().splitlines()]
        assert [r["input"] for r in records] == [repr(b) for b in bad]
        assert {r["stage"] for r in records} == {"key_of"}
        assert {r["kind"] for r in records} == {"key_extractor"}
        assert [r["error"].split(":")[0] for r in records] == [
            "KeyError" if b.startswith("boom") else "TypeError" for b in bad]
        assert all("input_base64" not in r for r in records)  # str inputs


# ---------------------------------------------------------------------------------------------
# encoders and computations that fail: --on-error
# ---------------------------------------------------------------------------------------------

def test_encoder_returning_an_int_stops_cleanly(tmp_path):
    lines = [f"line {i}" for i in range(12)]
    lines.insert(7, "bad line")
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    result = run_cli("--app", "wr_bad_apps:bad_encoder", "--input", "in.txt", "--output",
                     "out.txt", cwd=tmp_path)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    stopped = [line for line in err.splitlines() if line.startswith("wallaroo-run: stopped")]
    assert len(stopped) == 1, err
    out_path = tmp_path / "out.txt"
    assert "encoder" in stopped[0] and f"file://{out_path}" in stopped[0]
    assert "returned int" in stopped[0] and repr("bad line") in stopped[0]
    # what came before the bad value was delivered, nothing after it
    assert out_path.read_text() == "".join(f"{line}\n" for line in lines[:7])


def test_encoder_returning_an_int_with_skip_goes_on(tmp_path):
    lines = ["x", "bad", "y", "bad again", "z"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    result = run_cli("--app", "wr_bad_apps:bad_encoder", "--input", "in.txt", "--output",
                     "out.txt", "--on-error", "skip", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.txt").read_text() == "x\ny\nz\n"
    assert "2 error failure(s)" in result.stderr.decode()


def _numbers_file(tmp_path: Path) -> list[str]:
    lines = [str(i) for i in range(40)]
    for pos, word in ((5, "five"), (17, "x17"), (30, "3.5")):
        lines.insert(pos, word)
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    return lines


def _doubled(lines: list[str]) -> str:
    return "".join(f"{int(x) * 2}\n" for x in lines if x.isdigit())


def test_computation_that_raises_fails_cleanly_by_default(tmp_path):
    lines = _numbers_file(tmp_path)
    result = run_cli("--app", "wr_bad_apps:bad_compute", "--input", "in.txt", "--output",
                     "out.txt", cwd=tmp_path)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "Traceback (most recent call last)" in err
    assert "ValueError" in err and "parse_number" in err  # the user's frame is in the traceback
    stopped = [line for line in err.splitlines() if line.startswith("wallaroo-run: stopped")]
    assert len(stopped) == 1, err
    assert "'parse number'" in stopped[0] and "(input: 'five')" in stopped[0]
    assert "--on-error" in stopped[0]
    # the inputs before the failing one were delivered; nothing after it
    assert (tmp_path / "out.txt").read_text() == _doubled(lines[:lines.index("five")])


def test_computation_that_raises_with_skip_goes_on(tmp_path):
    lines = _numbers_file(tmp_path)
    result = run_cli("--app", "wr_bad_apps:bad_compute", "--input", "in.txt", "--output",
                     "out.txt", "--on-error", "skip", cwd=tmp_path)
    err = result.stderr.decode().splitlines()
    assert result.returncode == 0, err
    assert (tmp_path / "out.txt").read_text() == _doubled(lines)
    assert len(matching(err, "'parse number'", "ValueError")) == 1, err  # logged once
    assert matching(err, "'parse number'", "3 error", SUMMARY), err
    assert not any("Traceback" in line for line in err)


def test_computation_that_raises_with_dead_letter(tmp_path):
    lines = _numbers_file(tmp_path)
    dead = tmp_path / "failed.jsonl"
    result = run_cli("--app", "wr_bad_apps:bad_compute", "--input", "in.txt", "--output",
                     "out.txt", "--on-error", "dead-letter", "--dead-letter", str(dead),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.txt").read_text() == _doubled(lines)
    records = [json.loads(r) for r in dead.read_text().splitlines()]
    assert [r["input"] for r in records] == [repr(x) for x in lines if not x.isdigit()]
    assert {r["stage"] for r in records} == {"parse number"}
    assert all(r["error"].startswith("ValueError") for r in records)


def test_on_error_dead_letter_without_a_path_goes_on(tmp_path):
    lines = _numbers_file(tmp_path)
    result = run_cli("--app", "wr_bad_apps:bad_compute", "--input", "in.txt", "--output",
                     "out.txt", "--on-error", "dead-letter", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.txt").read_text() == _doubled(lines)
    written = [p for p in tmp_path.iterdir() if p.name not in ("in.txt", "out.txt")]
    assert len(written) == 1 and written[0].name in result.stderr.decode()
    assert len(written[0].read_text().splitlines()) == 3


def test_computation_that_raises_on_a_tcp_source_stops_the_engine(wallaroo_run, listener):
    proc, sink, port = start_tcp(wallaroo_run, listener, "bad_compute_tcp", "numbers")
    with socket.create_connection((HOST, port)) as conn:
        conn.sendall(b"".join(frame(str(i)) for i in range(5)))
        sink.wait_for(lambda d: d.count(b"\n") >= 5)
        conn.sendall(frame("not a number") + frame("7"))
        code = proc.wait()  # stops by itself, with the connection still open
    assert code == 1, proc.describe()
    assert "Traceback" in proc.stderr
    assert matching(proc.stderr_lines, "wallaroo-run: stopped", "'parse number'",
                    "'not a number'"), proc.stderr
    sink.wait_closed()
    assert sink.data == b"".join(f"{i * 2}\n".encode() for i in range(5))
