"""Tests for ``wallaroo send`` and ``wallaroo receive``: real processes, real sockets on 127.0.0.1."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from wallaroo.tools.framing import FrameDecoder, HostPort, TruncatedFrame, encode_frame, split_frames
from wallaroo.tools.receive import LineReader
from wallaroo.tools.send import batches, parse_duration

WALLAROO = os.path.join(os.path.dirname(sys.executable), "wallaroo")
LOCALHOST = "127.0.0.1"


def frames_of(*payloads: bytes) -> bytes:
    return b"".join(encode_frame(p) for p in payloads)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


def run_wallaroo(*args: str, timeout: float = 15) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([WALLAROO, *args], capture_output=True, timeout=timeout)


class CaptureServer:
    """Accepts one connection and records every byte until the peer closes, plus timing."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOCALHOST, port))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.data = b""
        self.accepted_at = self.closed_at = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    def _run(self) -> None:
        conn, _ = self.sock.accept()
        self.accepted_at = time.monotonic()
        with conn:
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        self.closed_at = time.monotonic()
        self.data = b"".join(chunks)

    def wait(self) -> bytes:
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "sender never closed the connection"
        return self.data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    server = CaptureServer()
    yield server
    server.close()


class Receiver:
    """A running ``wallaroo receive`` process and the port it listens on."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen([WALLAROO, "receive", "--listen", f"{LOCALHOST}:0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        first = self.proc.stderr.readline().decode()
        assert first.startswith("wallaroo receive: listening on 127.0.0.1:"), first
        self.port = int(first.rsplit(":", 1)[1])
        self.address = f"{LOCALHOST}:{self.port}"

    def send(self, *chunks: bytes, pause: float = 0.0) -> None:
        with socket.create_connection((LOCALHOST, self.port), timeout=5) as sock:
            for chunk in chunks:
                sock.sendall(chunk)
                time.sleep(pause)

    def finish(self, timeout: float = 10) -> tuple[int, bytes, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err.decode()


@pytest.fixture
def start_receive() -> Iterator:
    started: list[Receiver] = []

    def start(*args: str) -> Receiver:
        receiver = Receiver(list(args))
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        if receiver.proc.poll() is None:
            receiver.proc.kill()
        receiver.proc.communicate()


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

def test_send_text_file_frames_each_line(tmp_path: Path, capture: CaptureServer) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes("héllo\r\nworld\n\nlast".encode())
    result = run_wallaroo("send", "--host", capture.address, "--file", str(path))
    assert result.returncode == 0, result.stderr
    expected = frames_of("héllo".encode(), b"world", b"", b"last")
    assert capture.wait() == expected
    assert result.stderr.decode().startswith(
        f"wallaroo send: sent 4 messages ({len(expected)} bytes) to {capture.address} in ")


def test_send_binary_file_as_is_and_honours_messages(tmp_path: Path, capture: CaptureServer) -> None:
    path = tmp_path / "in.bin"
    path.write_bytes(frames_of(b"\x00\n\xff", b"two", b"three"))
    result = run_wallaroo("send", "--host", capture.address, "--file", str(path), "--binary", "--messages", "2",
                          "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    assert capture.wait() == frames_of(b"\x00\n\xff", b"two")
    assert b"sent 2 messages" in result.stderr


def test_send_repeat_loops_until_messages(tmp_path: Path, capture: CaptureServer) -> None:
    path = tmp_path / "in.txt"
    path.write_text("a\nb\nc\n")
    result = run_wallaroo("send", "--host", capture.address, "--file", str(path), "--repeat", "--messages", "7",
                          "--batch-size", "3")
    assert result.returncode == 0, result.stderr
    assert capture.wait() == frames_of(b"a", b"b", b"c", b"a", b"b", b"c", b"a")


def test_send_interval_paces_the_stream(tmp_path: Path, capture: CaptureServer) -> None:
    path = tmp_path / "in.txt"
    path.write_text("x\n")
    result = run_wallaroo("send", "--host", capture.address, "--file", str(path), "--repeat", "--messages", "20",
                          "--interval", "10ms")
    assert result.returncode == 0, result.stderr
    assert capture.wait() == frames_of(*[b"x"] * 20)
    assert capture.closed_at - capture.accepted_at >= 0.15


def test_send_retries_until_the_server_starts(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_text("late\n")
    port = free_port()
    sender = subprocess.Popen([WALLAROO, "send", "--host", f"{LOCALHOST}:{port}", "--file", str(path)],
                              stderr=subprocess.PIPE)
    server = None
    try:
        time.sleep(0.8)
        server = CaptureServer(port)
        assert server.wait() == frames_of(b"late")
        assert sender.wait(timeout=10) == 0
    finally:
        if sender.poll() is None:
            sender.kill()
        sender.communicate()
        if server is not None:
            server.close()


def test_send_gives_up_connecting_with_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_text("x\n")
    result = run_wallaroo("send", "--host", f"{LOCALHOST}:{free_port()}", "--file", str(path),
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

def test_receive_newline_mode_expect(start_receive) -> None:
    receiver = start_receive("--expect", "3")
    receiver.send(b"one\ntw", b"o\nthree\n", pause=0.05)
    code, out, err = receiver.finish()
    assert code == 0
    assert out == b"one\ntwo\nthree\n"
    assert "received 3 messages" in err


def test_receive_expect_writes_only_up_to_nth_message(start_receive) -> None:
    receiver = start_receive("--expect", "2")
    receiver.send(b"a\nb\nc\nd\n")
    code, out, _ = receiver.finish()
    assert (code, out) == (0, b"a\nb\n")


def test_receive_framed_writes_payload_lines(start_receive) -> None:
    receiver = start_receive("--framed", "--expect", "3")
    stream = frames_of(b"first", b"", b"third")
    receiver.send(stream[:7], stream[7:], pause=0.05)
    code, out, err = receiver.finish()
    assert code == 0
    assert out == b"first\n\nthird\n"
    assert "received 3 messages" in err


def test_receive_framed_raw_keeps_headers(start_receive, tmp_path: Path) -> None:
    output = tmp_path / "out.bin"
    receiver = start_receive("--framed", "--raw", "--expect", "2", "--output", str(output))
    stream = frames_of(b"\x00\n\xff", b"\n\n")
    receiver.send(stream)
    code, out, _ = receiver.finish()
    assert code == 0
    assert out == b""
    assert output.read_bytes() == stream


def test_receive_timeout_with_unmet_expect_exits_1(start_receive) -> None:
    receiver = start_receive("--expect", "5", "--timeout", "0.5")
    receiver.send(b"only\n")
    code, out, err = receiver.finish()
    assert code == 1
    assert out == b"only\n"
    assert "1 of 5" in err


def test_receive_timeout_without_expect_exits_0(start_receive) -> None:
    receiver = start_receive("--timeout", "0.3")
    receiver.send(b"x\ny\n")
    code, out, err = receiver.finish()
    assert (code, out) == (0, b"x\ny\n")
    assert "received 2 messages" in err


def test_receive_accepts_a_second_connection(start_receive) -> None:
    receiver = start_receive("--framed", "--expect", "4")
    receiver.send(frames_of(b"a", b"b"))
    receiver.send(frames_of(b"c", b"d"))
    code, out, _ = receiver.finish()
    assert (code, out) == (0, b"a\nb\nc\nd\n")


def test_receive_concurrent_connections_do_not_interleave_lines(start_receive) -> None:
    receiver = start_receive("--expect", "4")
    with socket.create_connection((LOCALHOST, receiver.port)) as one, \
            socket.create_connection((LOCALHOST, receiver.port)) as two:
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
    receiver.proc.send_signal(signal.SIGTERM)
    code, _, err = receiver.finish()
    assert code == 0
    assert output.read_bytes() == b"kept\npartial"
    assert "received 1 messages" in err


def test_receive_raw_without_framed_exits_2() -> None:
    result = run_wallaroo("receive", "--listen", f"{LOCALHOST}:0", "--raw")
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
