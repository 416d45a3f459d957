"""Tests for ``wallaroo send`` and ``wallaroo receive``: real processes, real sockets on 127.0.0.1."""
from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import click
import pytest

from support.net import HOST, Listener, free_port
from support.processes import LISTENING_RE, WALLAROO, Proc
from wallaroo.tools.framing import FrameDecoder, HostPort, TruncatedFrame, encode_frame, split_frames
from wallaroo.tools.receive import LineReader
from wallaroo.tools.send import batches, parse_duration


def frames_of(*payloads: bytes) -> bytes:
    return b"".join(encode_frame(p) for p in payloads)


def run_wallaroo(*args: str, timeout: float = 15) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([WALLAROO, *args], capture_output=True, timeout=timeout)


def send_file(capture: Listener, path: Path,
              *args: str) -> tuple[subprocess.CompletedProcess[bytes], bytes]:
    """``wallaroo send --host CAPTURE --file PATH ARGS``, which must exit 0; returns its result
    and the bytes ``capture`` received until the sender closed the connection."""
    result = run_wallaroo("send", "--host", capture.address, "--file", str(path), *args)
    assert result.returncode == 0, result.stderr
    return result, capture.wait_closed(timeout=10)


@pytest.fixture
def capture(listener) -> Listener:
    """A TCP server standing in for the receiver of ``wallaroo send``."""
    return listener()


class Receiver:
    """A running ``wallaroo receive`` process and the port it listens on."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.port = int(proc.wait_stderr(LISTENING_RE)["port"])
        first = proc.stderr_lines[0]
        assert first.startswith("wallaroo receive: listening on 127.0.0.1:"), proc.describe()
        self.address = f"{HOST}:{self.port}"

    def send(self, *chunks: bytes, pause: float = 0.0) -> None:
        with socket.create_connection((HOST, self.port), timeout=5) as sock:
            for chunk in chunks:
                sock.sendall(chunk)
                time.sleep(pause)

    def finish(self, timeout: float = 10) -> tuple[int, bytes, str]:
        """Wait for the exit; return the exit code, stdout and stderr."""
        code = self.proc.wait(timeout)
        return code, self.proc.stdout, self.proc.stderr


@pytest.fixture
def start_receive(processes) -> Callable[..., Receiver]:
    def start(*args: str) -> Receiver:
        return Receiver(processes([WALLAROO, "receive", "--listen", f"{HOST}:0", *args],
                                  name="wallaroo receive", timeout=10))

    return start


# --- framing helpers -------------------------------------------------------------------------

def test_frame_decoder_reassembles_frames_fed_one_byte_at_a_time() -> None:
    stream = frames_of(b"alpha", b"", b"gamma!")
    decoder = FrameDecoder()
    found: list[bytes] = []
    for i in range(len(stream)):
        decoder.feed(stream[i:i + 1])
        found += decoder.frames()
    assert found == [encode_frame(b"alpha"), encode_frame(b""), encode_frame(b"gamma!")]
    assert decoder.pending == 0


def test_frame_decoder_limit_keeps_the_rest_buffered() -> None:
    decoder = FrameDecoder()
    decoder.feed(frames_of(b"a", b"b", b"c"))
    assert decoder.frames(limit=2) == [encode_frame(b"a"), encode_frame(b"b")]
    assert decoder.frames() == [encode_frame(b"c")]


def test_split_frames_reports_offset_of_truncated_frame() -> None:
    data = frames_of(b"abc", b"defg") + encode_frame(b"xyz")[:-1]
    with pytest.raises(TruncatedFrame) as info:
        split_frames(data)
    assert info.value.offset == len(frames_of(b"abc", b"defg"))
    assert info.value.missing == 1


def test_host_port_parsing() -> None:
    assert HostPort(allow_port_zero=True).convert("[::1]:0", None, None) == ("::1", 0)
    assert str(HostPort(allow_port_zero=False).convert("localhost:7010", None, None)) == "localhost:7010"
    for bad in ("7010", "localhost", ":7010", "host:99999", "host:x"):
        with pytest.raises(click.BadParameter):
            HostPort(allow_port_zero=True).convert(bad, None, None)
    with pytest.raises(click.BadParameter):
        HostPort(allow_port_zero=False).convert("localhost:0", None, None)


@pytest.mark.parametrize(("text", "seconds"), [
    ("5ms", 0.005), ("1s", 1.0), ("250us", 250e-6), ("100ns", 100e-9), ("0.5s", 0.5), ("1000000", 0.001),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5 parsecs", "1.5", "-1ms", "ms"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_batches_cycle_and_chunk() -> None:
    assert list(batches([b"a", b"b", b"c"], 7, True, 3)) == [[b"a", b"b", b"c"]] * 2 + [[b"a"]]
    assert list(batches([b"a", b"b", b"c"], 10, False, 2)) == [[b"a", b"b"], [b"c"]]


def test_line_reader_stops_at_limit_and_holds_partial_line() -> None:
    reader = LineReader()
    assert reader.feed(b"a\nb", None) == (b"a\n", 1)
    assert reader.feed(b"\nc\nd\n", 2) == (b"b\nc\n", 2)
    assert reader.finish() == (b"d\n", 0)


# --- wallaroo send ---------------------------------------------------------------------------

def test_send_text_file_frames_each_line(tmp_path: Path, capture: Listener) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes("héllo\r\nworld\n\nlast".encode())
    result, received = send_file(capture, path)
    expected = frames_of("héllo".encode(), b"world", b"", b"last")
    assert received == expected
    assert result.stderr.decode().startswith(
        f"wallaroo send: sent 4 messages ({len(expected)} bytes) to {capture.address} in ")


def test_send_binary_file_as_is_and_honours_messages(tmp_path: Path, capture: Listener) -> None:
    path = tmp_path / "in.bin"
    path.write_bytes(frames_of(b"\x00\n\xff", b"two", b"three"))
    result, received = send_file(capture, path, "--binary", "--messages", "2", "--batch-size", "2")
    assert received == frames_of(b"\x00\n\xff", b"two")
    assert b"sent 2 messages" in result.stderr


def test_send_repeat_loops_until_messages(tmp_path: Path, capture: Listener) -> None:
    path = tmp_path / "in.txt"
    path.write_text("a\nb\nc\n")
    _, received = send_file(capture, path, "--repeat", "--messages", "7", "--batch-size", "3")
    assert received == frames_of(b"a", b"b", b"c", b"a", b"b", b"c", b"a")


def test_send_interval_paces_the_stream(tmp_path: Path, capture: Listener) -> None:
    path = tmp_path / "in.txt"
    path.write_text("x\n")
    _, received = send_file(capture, path, "--repeat", "--messages", "20", "--interval", "10ms")
    assert received == frames_of(*[b"x"] * 20)
    assert capture.closed_at - capture.accepted_at >= 0.15


def test_send_retries_until_the_server_starts(tmp_path: Path, processes, listener) -> None:
    path = tmp_path / "in.txt"
    path.write_text("late\n")
    port = free_port()
    sender = processes([WALLAROO, "send", "--host", f"{HOST}:{port}", "--file", str(path)],
                       name="wallaroo send", timeout=10)
    time.sleep(0.8)
    server = listener(port)
    assert server.wait_closed(timeout=10) == frames_of(b"late")
    assert sender.wait() == 0, sender.describe()


def test_send_gives_up_connecting_with_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_text("x\n")
    result = run_wallaroo("send", "--host", f"{HOST}:{free_port()}", "--file", str(path),
                          "--connect-timeout", "0.3")
    assert result.returncode == 1
    assert b"cannot connect to 127.0.0.1:" in result.stderr


@pytest.mark.parametrize(("make_args", "complaint"), [
    (lambda p: ["--host", "nowhere", "--file", str(p)], b"'--host'"),
    (lambda p: ["--host", "127.0.0.1:0", "--file", str(p)], b"'--host'"),
    (lambda p: ["--host", "127.0.0.1:9", "--file", str(p.parent / "missing.txt")], b"does not exist"),
    (lambda p: ["--host", "127.0.0.1:9", "--file", str(p), "--interval", "fast"], b"'--interval'"),
    (lambda p: ["--host", "127.0.0.1:9", "--file", str(p), "--repeat"], b"add --messages"),
])
def test_send_bad_input_exits_2(tmp_path: Path, make_args, complaint: bytes) -> None:
    path = tmp_path / "in.txt"
    path.write_text("x\n")
    result = run_wallaroo("send", *make_args(path))
    assert result.returncode == 2
    assert complaint in result.stderr


def test_send_empty_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    result = run_wallaroo("send", "--host", "127.0.0.1:9", "--file", str(path))
    assert result.returncode == 2
    assert b"empty" in result.stderr and b"empty.txt" in result.stderr


def test_send_truncated_binary_file_exits_2_naming_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(frames_of(b"fine") + b"\x00\x00\x00\x09abc")
    result = run_wallaroo("send", "--host", "127.0.0.1:9", "--file", str(path), "--binary")
    assert result.returncode == 2
    assert b"bad.bin" in result.stderr and b"byte offset 8" in result.stderr


# --- wallaroo receive ------------------------------------------------------------------------

class ReceiveCase(NamedTuple):
    args: list[str]                 # for wallaroo receive, after --listen
    connections: list[list[bytes]]  # one after the other; each: its chunks in order
    pause: float                    # seconds after each chunk
    code: int                       # exit code
    out: bytes                      # stdout
    err: str = ""                   # must appear in stderr


FRAMED = frames_of(b"first", b"", b"third")
RECEIVE_CASES = {
    "newline_mode_expect": ReceiveCase(
        ["--expect", "3"], [[b"one\ntw", b"o\nthree\n"]], 0.05,
        0, b"one\ntwo\nthree\n", "received 3 messages"),
    "expect_writes_only_up_to_nth_message": ReceiveCase(
        ["--expect", "2"], [[b"a\nb\nc\nd\n"]], 0.0, 0, b"a\nb\n"),
    "framed_writes_payload_lines": ReceiveCase(
        ["--framed", "--expect", "3"], [[FRAMED[:7], FRAMED[7:]]], 0.05,
        0, b"first\n\nthird\n", "received 3 messages"),
    "timeout_with_unmet_expect_exits_1": ReceiveCase(
        ["--expect", "5", "--timeout", "0.5"], [[b"only\n"]], 0.0, 1, b"only\n", "1 of 5"),
    "timeout_without_expect_exits_0": ReceiveCase(
        ["--timeout", "0.3"], [[b"x\ny\n"]], 0.0, 0, b"x\ny\n", "received 2 messages"),
    "accepts_a_second_connection": ReceiveCase(
        ["--framed", "--expect", "4"], [[frames_of(b"a", b"b")], [frames_of(b"c", b"d")]], 0.0,
        0, b"a\nb\nc\nd\n"),
}


@pytest.mark.parametrize("case", list(RECEIVE_CASES.values()), ids=list(RECEIVE_CASES))
def test_receive(start_receive, case: ReceiveCase) -> None:
    receiver = start_receive(*case.args)
    for chunks in case.connections:
        receiver.send(*chunks, pause=case.pause)
    code, out, err = receiver.finish()
    assert code == case.code, err
    assert out == case.out
    assert case.err in err


def test_receive_framed_raw_keeps_headers(start_receive, tmp_path: Path) -> None:
    output = tmp_path / "out.bin"
    receiver = start_receive("--framed", "--raw", "--expect", "2", "--output", str(output))
    stream = frames_of(b"\x00\n\xff", b"\n\n")
    receiver.send(stream)
    code, out, _ = receiver.finish()
    assert code == 0
    assert out == b""
    assert output.read_bytes() == stream


def test_receive_concurrent_connections_do_not_interleave_lines(start_receive) -> None:
    receiver = start_receive("--expect", "4")
    with socket.create_connection((HOST, receiver.port)) as one, \
            socket.create_connection((HOST, receiver.port)) as two:
        one.sendall(b"one-fi")
        time.sleep(0.05)
        two.sendall(b"two-fi")
        time.sleep(0.05)
        one.sendall(b"rst\none-second\n")
        time.sleep(0.05)
        two.sendall(b"rst\ntwo-second\n")
        code, out, _ = receiver.finish()
    assert code == 0
    assert sorted(out.splitlines()) == [b"one-first", b"one-second", b"two-first", b"two-second"]


def test_receive_sigterm_flushes_and_exits_0(start_receive, tmp_path: Path) -> None:
    output = tmp_path / "out.txt"
    receiver = start_receive("--output", str(output))
    receiver.send(b"kept\npartial")
    deadline = time.monotonic() + 5
    while output.read_bytes() != b"kept\npartial" and time.monotonic() < deadline:
        time.sleep(0.02)
    receiver.proc.signal(signal.SIGTERM)
    code, _, err = receiver.finish()
    assert code == 0
    assert output.read_bytes() == b"kept\npartial"
    assert "received 1 messages" in err


def test_receive_raw_without_framed_exits_2() -> None:
    result = run_wallaroo("receive", "--listen", f"{HOST}:0", "--raw")
    assert result.returncode == 2
    assert b"--framed" in result.stderr


def test_receive_bad_listen_address_exits_2() -> None:
    result = run_wallaroo("receive", "--listen", "7002")
    assert result.returncode == 2
    assert b"'--listen'" in result.stderr


# --- send into receive -----------------------------------------------------------------------

def test_send_into_receive_round_trip(start_receive, tmp_path: Path) -> None:
    lines = [f"message {i} ✓" for i in range(200)]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "out.txt"
    receiver = start_receive("--framed", "--expect", "200", "--output", str(output), "--timeout", "10")
    sent = run_wallaroo("send", "--host", receiver.address, "--file", str(source), "--batch-size", "16")
    assert sent.returncode == 0, sent.stderr
    code, _, err = receiver.finish()
    assert code == 0, err
    assert output.read_text(encoding="utf-8").splitlines() == lines
    assert "received 200 messages" in err
