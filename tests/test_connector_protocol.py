"""The connector protocol: frame codecs, ConnectorSource with a real client over 127.0.0.1,
ConnectorSink against a real two-phase-commit SinkServer (in process and as a process killed
with SIGKILL), and the send_lines client."""
from __future__ import annotations

import asyncio
import functools
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from wallaroo.api.configs import SinkConnectorConfig, SourceConnectorConfig
from wallaroo.connectors.connector import ConnectorSink, ConnectorSource
from wallaroo.connectors.connector_wire import (
    NOTHING, VERSION, Ack, Eos, Error, FrameDecoder, Hello, ListUncommitted, Message, Notify,
    NotifyAck, Ok, Phase1, Phase2, ProtocolError, Reply, ReplyUncommitted, Restart, WorkersLeft,
    decode_frame, encode)
from wallaroo.errors import WallarooParameterError
from wallaroo.experimental import (AtLeastOnceSourceConnector, ConnectorError, SinkServer,
                                   stream_id_for)
from wallaroo.experimental.sink_server import TxnLog
from wallaroo.runtime.flow import FlowControl

pytestmark = pytest.mark.timeout(10)
ROOT = Path(__file__).resolve().parents[1]
COOKIE = "secret"


def run_async(test):
    """Run an async test function in a fresh event loop, within 5 s."""
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(test(*args, **kwargs), 5))
    return wrapper


async def until(condition, timeout: float = 2.0, what: str = "condition"):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class SourceCtx:
    """The parts of the worker's source context a ConnectorSource uses."""

    def __init__(self, resilient: bool = False):
        self.name = "feed"
        self.flow = FlowControl()
        self.reuse_port = False
        self.share = (0, 1)
        self.worker_name = "w1"
        self.resilient = resilient
        self.values: list = []
        self.batches: list[int] = []

    def emit(self, values: list) -> bool:
        self.values.extend(values)
        self.batches.append(len(values))
        return True

    def bad_input(self, kind, value, exc) -> None:
        raise AssertionError(f"unexpected bad input {kind}: {exc}")


class SinkCtx:
    def __init__(self, resilient: bool, worker: str = "w1"):
        self.name = "sink 0"
        self.flow = FlowControl()
        self.worker_name = worker
        self.resilient = resilient
        self.part_path = lambda path: path


class Batch:
    def __init__(self, values):
        self.values = values


async def started_source(resilient=False, max_credits=10, refill=5, position=None):
    config = SourceConnectorConfig("feed", None, None, 0, COOKIE, max_credits, refill)
    ctx = SourceCtx(resilient)
    source = ConnectorSource(config, ctx)
    if position is not None:
        source.restore(position)
    await source.start()
    return source, ctx


def client_for(source, cookie=COOKIE, version=VERSION) -> AtLeastOnceSourceConnector:
    host, port = source.address
    return AtLeastOnceSourceConnector(version, cookie, "test", "client-1", host, port)


class RawClient:
    """A bare socket speaking frames, to send what the library would not."""

    @classmethod
    async def open(cls, source):
        self = cls()
        self.reader, self.writer = await asyncio.open_connection(*source.address)
        self.decoder = FrameDecoder()
        self.inbox: list = []
        return self

    def send(self, *messages) -> None:
        self.writer.write(b"".join(encode(m) for m in messages))

    async def receive(self):
        while not self.inbox:
            data = await self.reader.read(65536)
            if not data:
                raise EOFError("closed")
            self.inbox.extend(self.decoder.feed(data))
        return self.inbox.pop(0)

    def close(self) -> None:
        self.writer.close()

    async def hello(self) -> int:
        self.send(Hello(VERSION, COOKIE, "raw", "raw-1"))
        reply = await self.receive()
        assert isinstance(reply, Ok)
        return reply.credits


# -- codecs -------------------------------------------------------------------------------

ALL_MESSAGES = [
    Hello("v0.0.1", "cookie", "prog", "inst ü"), Ok(7), Error("no"),
    Notify(2 ** 64 - 2, "stream", NOTHING), NotifyAck(False, 3, 4),
    Message(9, 10, -5, b"k", b"payload\x00"), Message(9, 11, 0, None, b""),
    Ack(3, [(1, 2), (3, 4)]), Ack(0, []), Restart(), Restart("10.0.0.1:7000"), Eos(5),
    ListUncommitted(8), ReplyUncommitted(8, ["a:c1", "b:c2"]),
    Phase1("w:c3", [(1, 0, 10), (2, 5, 6)]),
    Reply("w:c3", True), Phase2("w:c3", False), WorkersLeft(1, ["w2", "w3"]),
]


@pytest.mark.parametrize("msg", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_when_fed_byte_by_byte(msg):
    frame = encode(msg)
    assert struct.unpack(">I", frame[:4])[0] == len(frame) - 4
    decoder = FrameDecoder()
    out = []
    for i in range(len(frame)):
        out += decoder.feed(frame[i:i + 1])
    assert out == [msg] and decoder.pending() == 0


def test_two_phase_commit_messages_travel_in_stream_0_messages():
    frame = encode(Phase2("w:c1", True))
    assert frame[4] == 5  # a MESSAGE frame
    stream, mid, when, key_len = struct.unpack(">QQqH", frame[5:31])
    assert (stream, key_len, frame[31]) == (0, 0, 205)


def test_many_frames_in_one_feed_come_out_in_order():
    frames = b"".join(encode(Message(1, i, 0, None, b"%d" % i)) for i in range(1, 101))
    out = FrameDecoder().feed(frames)
    assert [m.message_id for m in out] == list(range(1, 101))
    assert out[41].payload == b"42"


@pytest.mark.parametrize("frame, reason", [
    (b"\x00\x00\x00\x00", "empty frame"),
    (b"\x00\x00\x00\x01\x09", "unknown frame type 9"),
    (b"\x00\x00\x00\x05\x08abcd", "Eos frame too short: no room for its stream id"),
    (b"\x00\x00\x00\x0a\x08" + bytes(9), "Eos frame has 1 bytes after its last field"),
    (b"\x00\x00\x00\x04\x02\x00\x01\xff", "message is not UTF-8"),
    (b"\x00\x00\x00\x06\x05" + bytes(5), "Message frame too short"),
    (encode(Message(1, 1, 0, None, b""))[:29] + b"\x00\x09", "too short for its 9-byte key"),
    (encode(Message(0, 0, 0, None, b"\xc8")), "MESSAGE of unknown type 200"),
    (encode(Message(0, 0, 0, None, b"\xcb\x00")), "Phase1 frame too short"),
], ids=["empty", "type", "short", "trailing", "utf8", "msghead", "key", "2pc-type", "2pc-short"])
def test_bad_frames_raise_protocol_errors_naming_the_fault(frame, reason):
    with pytest.raises(ProtocolError) as caught:
        FrameDecoder().feed(frame)
    assert reason in str(caught.value)


def test_a_bad_frame_keeps_the_messages_cut_before_it():
    with pytest.raises(ProtocolError) as caught:
        FrameDecoder().feed(encode(Eos(1)) + encode(Eos(2)) + b"\x00\x00\x00\x01\x63")
    assert caught.value.decoded == [Eos(1), Eos(2)]


def test_oversized_frames_and_strings_are_refused():
    with pytest.raises(ProtocolError, match="over the limit of 100 bytes"):
        FrameDecoder(max_frame=100).feed(struct.pack(">I", 101))
    with pytest.raises(ValueError, match="stream name is 70000 bytes"):
        encode(Notify(1, "x" * 70000))
    with pytest.raises(TypeError, match="not a connector protocol message"):
        encode("hello")
    assert decode_frame(encode(Ok(1))[4:]) == Ok(1)


def test_stream_id_for_is_the_first_64_bits_of_sha256():
    import hashlib
    assert stream_id_for("feed") == int(hashlib.sha256(b"feed").hexdigest()[:16], 16)


# -- configs ------------------------------------------------------------------------------

def test_connector_configs_validate_their_arguments():
    cfg = SourceConnectorConfig("feed", None, None, "7100", b"c", 10, 2, host="0.0.0.0")
    assert (cfg.port, cfg.cookie, cfg.max_credits, cfg.refill_credits) == (7100, "c", 10, 2)
    assert cfg.describe() == "connector://0.0.0.0:7100" and not cfg.bounded
    with pytest.raises(WallarooParameterError, match="max_credits must be a positive int"):
        SourceConnectorConfig("feed", None, None, 7100, "c", 0, 2)
    with pytest.raises(WallarooParameterError, match="refill_credits must be a positive int"):
        SourceConnectorConfig("feed", None, None, 7100, "c", 10, True)
    with pytest.raises(WallarooParameterError, match="port 70000"):
        SourceConnectorConfig("feed", None, None, 70000, "c", 10, 2)
    with pytest.raises(WallarooParameterError, match="decode"):
        SourceConnectorConfig("feed", None, object(), 7100, "c", 10, 2)
    with pytest.raises(WallarooParameterError, match="encode"):
        SinkConnectorConfig("out", None, None, 7200, "c")
    with pytest.raises(WallarooParameterError, match="cookie must be a string"):
        SinkConnectorConfig("out", ENCODER, None, 7200, 5)


class _Encoder:
    def encode(self, value):
        return value


ENCODER = _Encoder()


# -- ConnectorSource ------------------------------------------------------------------------

@run_async
async def test_source_takes_a_clients_messages_in_order_within_its_credits():
    source, ctx = await started_source(max_credits=4, refill=1)
    client = client_for(source)
    await client.connect()
    assert client.credits == 4
    sid = stream_id_for("numbers")
    ack = await client.notify(sid, "numbers")
    assert ack.ok and ack.point_of_ref == NOTHING
    for i in range(1, 51):
        await client.send(sid, i, b"%d" % i)
    await until(lambda: len(ctx.values) == 50, what="50 messages")
    assert ctx.values == [b"%d" % i for i in range(1, 51)]
    assert source.protocol_errors == 0 and source.position() == {sid: 50}
    assert max(ctx.batches) <= 4  # a client never has more than max_credits outstanding
    await until(lambda: client.pending(sid) == 0, what="acks without resilience")
    client.close()
    await source.stop()


@run_async
async def test_source_refuses_a_wrong_cookie_or_version_naming_it():
    source, _ = await started_source()
    with pytest.raises(ConnectorError, match="wrong cookie"):
        await client_for(source, cookie="guess").connect()
    with pytest.raises(ConnectorError, match="protocol version 'v9' is not supported"):
        await client_for(source, version="v9").connect()
    assert source.protocol_errors == 2
    await source.stop()


@run_async
async def test_source_drops_duplicates_and_messages_of_unnotified_streams_close_the_connection():
    source, ctx = await started_source()
    raw = await RawClient.open(source)
    await raw.hello()
    raw.send(Notify(5, "s"), *[Message(5, i, 0, None, b"m%d" % i) for i in (1, 2, 2, 1, 3)])
    assert await raw.receive() == NotifyAck(True, 5, NOTHING)
    await until(lambda: len(ctx.values) == 3)
    assert ctx.values == [b"m1", b"m2", b"m3"] and source.duplicates == 2
    assert ctx.batches == [3]  # one data_received, one natural batch
    raw.send(Message(6, 1, 0, None, b"x"))
    while True:
        reply = await raw.receive()
        if isinstance(reply, Error):
            break
    assert "stream 6, which is not open on this connection" in reply.message
    assert source.protocol_errors == 1
    raw.close()
    await source.stop()


@run_async
async def test_source_closes_a_client_that_spends_more_than_its_credits():
    source, ctx = await started_source(max_credits=3, refill=1)
    other = client_for(source)
    await other.connect()
    raw = await RawClient.open(source)
    assert await raw.hello() == 3
    raw.send(Notify(5, "s"), *[Message(5, i, 0, None, b"x") for i in range(1, 4)])
    replies = [await raw.receive(), await raw.receive()]
    assert isinstance(replies[-1], Error) and "without credit" in replies[-1].message
    assert ctx.values == [b"x", b"x"]  # what came within the credits is taken
    # the other connection goes on
    sid = stream_id_for("other")
    assert (await other.notify(sid, "other")).ok
    await other.send(sid, 1, b"fine")
    await until(lambda: b"fine" in ctx.values)
    other.close()
    raw.close()
    await source.stop()


@run_async
async def test_notify_ack_answers_the_restored_position_and_older_ids_are_dropped():
    sid = stream_id_for("numbers")
    source, ctx = await started_source(position={sid: 41})
    client = client_for(source)
    await client.connect()
    ack = await client.notify(sid, "numbers")
    assert ack.ok and ack.point_of_ref == 41
    other = await client.notify(stream_id_for("fresh"), "fresh")
    assert other.point_of_ref == NOTHING
    for i in (40, 41, 42):
        await client.send(sid, i, b"%d" % i)
    await until(lambda: ctx.values)
    await asyncio.sleep(0.05)
    assert ctx.values == [b"42"] and source.duplicates == 2  # 40 and 41 were seen before
    client.close()
    await source.stop()


@run_async
async def test_a_stream_open_on_one_connection_is_refused_on_another_until_eos():
    source, _ = await started_source()
    first, second = client_for(source), client_for(source)
    await first.connect()
    await second.connect()
    sid = stream_id_for("shared")
    assert (await first.notify(sid, "shared")).ok
    await first.send(sid, 1, b"a")
    refused = await second.notify(sid, "shared")
    assert not refused.ok
    await first.wait_acked(sid, 1)
    await first.end_of_stream(sid)
    await until(lambda: sid not in source._owner, what="EOS")
    taken = await second.notify(sid, "shared")
    assert taken.ok and taken.point_of_ref == 1
    first.close()
    second.close()
    await source.stop()


@run_async
async def test_checkpoint_complete_acks_so_the_client_forgets_acknowledged_messages():
    source, ctx = await started_source(resilient=True)
    client = client_for(source)
    await client.connect()
    sid = stream_id_for("numbers")
    await client.notify(sid, "numbers")
    for i in range(1, 6):
        await client.send(sid, i, b"%d" % i)
    await until(lambda: len(ctx.values) == 5)
    await asyncio.sleep(0.1)
    assert client.pending(sid) == 5  # with resilience only checkpoints acknowledge
    source.checkpoint_complete({sid: 3, 999: 1})
    await until(lambda: client.pending(sid) == 2, what="the checkpoint's ack")
    assert client.acked(sid) == 3
    client.close()
    await source.stop()


@run_async
async def test_restart_makes_the_client_reconnect_and_resend_what_was_not_acknowledged():
    source, ctx = await started_source(resilient=True, max_credits=5, refill=2)
    client = client_for(source)
    await client.connect()
    sid = stream_id_for("numbers")
    await client.notify(sid, "numbers")
    for i in range(1, 9):
        await client.send(sid, i, b"%d" % i)
    await until(lambda: len(ctx.values) == 8)
    checkpoint = {sid: 3}
    source.checkpoint_complete(checkpoint)
    await until(lambda: client.acked(sid) == 3)
    source.announce_restart()            # the worker rolls back to the checkpoint ...
    await asyncio.sleep(0.1)
    assert client.connections == 1       # ... refusing connections until it is restored
    source.restore(checkpoint)
    ctx.values.clear()
    await until(lambda: len(ctx.values) == 5, what="the resend")
    assert ctx.values == [b"%d" % i for i in range(4, 9)]
    assert client.restarts == 1 and client.connections == 2
    await client.send(sid, 9, b"9")      # and it goes on
    await until(lambda: ctx.values[-1:] == [b"9"])
    client.close()
    await source.stop()


@run_async
async def test_a_lost_connection_is_resent_after_the_points_the_worker_saw():
    source, ctx = await started_source(resilient=True)
    client = client_for(source)
    await client.connect()
    sid = stream_id_for("numbers")
    await client.notify(sid, "numbers")
    for i in range(1, 4):
        await client.send(sid, i, b"%d" % i)
    await until(lambda: len(ctx.values) == 3)
    for conn in list(source._connections):
        conn.transport.abort()           # no RESTART, just gone
    await until(lambda: client.connections == 2 and client._streams[sid].open)
    await client.send(sid, 4, b"4")
    await until(lambda: len(ctx.values) == 4)
    assert ctx.values == [b"1", b"2", b"3", b"4"] and source.duplicates == 0
    client.close()
    await source.stop()


@run_async
async def test_a_closed_gate_stops_credits_and_reading_until_it_opens():
    source, ctx = await started_source(max_credits=4, refill=1)
    client = client_for(source)
    await client.connect()
    sid = stream_id_for("numbers")
    await client.notify(sid, "numbers")
    ctx.flow.block("slow sink")
    for i in range(1, 21):
        await client.send(sid, i, b"x")
    await asyncio.sleep(0.2)
    assert len(ctx.values) <= 3       # the first credits (one went on NOTIFY), then nothing
    ctx.flow.unblock("slow sink")
    await until(lambda: len(ctx.values) == 20, what="the rest after the gate opens")
    client.close()
    await source.stop()


@run_async
async def test_source_describes_its_real_address_and_reports_a_taken_port():
    source, _ = await started_source()
    host, port = source.address
    assert source.describe() == f"connector://127.0.0.1:{port}" and port > 0
    config = SourceConnectorConfig("feed", None, None, port, COOKIE, 10, 5)
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
        await ConnectorSource(config, SourceCtx()).start()
    await source.stop()


# -- ConnectorSink against SinkServer -------------------------------------------------------

async def sink_server(tmp_path, port=0):
    server = SinkServer("127.0.0.1", port, COOKIE, str(tmp_path / "out.txt"),
                        str(tmp_path / "logs"))
    await server.start()
    return server


async def started_sink(port, resilient, worker="w1"):
    config = SinkConnectorConfig("out", ENCODER, None, port, COOKIE)
    sink = ConnectorSink(config, SinkCtx(resilient, worker))
    await sink.start()
    return sink


@run_async
async def test_without_resilience_the_sink_commits_on_flush(tmp_path):
    server = await sink_server(tmp_path)
    sink = await started_sink(server.address[1], resilient=False)
    sink.push(Batch([b"a\n", b"bb\n"]))
    sink.push(Batch([b"ccc\n"]))
    assert await sink.flush(2.0)
    assert (tmp_path / "out.txt").read_bytes() == b"a\nbb\nccc\n"
    assert server.txns.in_doubt() == [] and len(server.txns.committed) == 1
    sink.push(Batch([b"d\n"]))
    await sink.close()
    assert (tmp_path / "out.txt").read_bytes() == b"a\nbb\nccc\nd\n"
    await server.close()


@run_async
async def test_without_resilience_the_sink_commits_every_second_by_itself(tmp_path):
    server = await sink_server(tmp_path)
    sink = await started_sink(server.address[1], resilient=False)
    sink.COMMIT_EVERY = 0.05
    sink.push(Batch([b"tick\n"]))
    await until(lambda: (tmp_path / "out.txt").read_bytes() == b"tick\n", what="a commit")
    await sink.close()
    await server.close()


@run_async
async def test_without_resilience_a_lost_connection_resends_what_was_not_committed(tmp_path):
    server = await sink_server(tmp_path)
    port = server.address[1]
    sink = await started_sink(port, resilient=False)
    sink.push(Batch([b"one\n"]))
    assert await sink.flush(2.0)
    sink.push(Batch([b"two\n"]))
    await server.close()                 # the server goes away with "two" uncommitted
    server = await sink_server(tmp_path, port)
    sink.push(Batch([b"three\n"]))
    assert await sink.flush(3.0)
    assert (tmp_path / "out.txt").read_bytes() == b"one\ntwo\nthree\n"
    await sink.close()
    await server.close()


@run_async
async def test_prepare_and_commit_put_only_committed_bytes_in_the_file(tmp_path):
    server = await sink_server(tmp_path)
    sink = await started_sink(server.address[1], resilient=True)
    await sink.recover(0, None)
    sink.push(Batch([b"a", b"b"]))
    record = await sink.prepare(1)
    assert record["txn"].startswith("w1:c1.") and record["ranges"] == [(1, 0, 2)]
    assert server.txns.in_doubt() == [record["txn"]]
    sink.push(Batch([b"c"]))                # after the barrier: the next checkpoint's
    assert (tmp_path / "out.txt").read_bytes() == b""
    await sink.commit(1, record)
    assert (tmp_path / "out.txt").read_bytes() == b"ab"
    record2 = await sink.prepare(2)
    assert record2["ranges"] == [(1, 2, 3)]
    await sink.abort(2, record2)
    assert (tmp_path / "out.txt").read_bytes() == b"ab" and server.txns.in_doubt() == []
    await sink.close()
    await server.close()


@run_async
async def test_a_no_vote_or_a_lost_connection_makes_prepare_raise(tmp_path):
    server = await sink_server(tmp_path)
    sink = await started_sink(server.address[1], resilient=True)
    record = await sink.prepare(1)
    await sink.commit(1, record)
    with pytest.raises(ConnectorError, match=r"voted to abort w1:c1\."):
        await sink.prepare(1)                # already committed: the server votes no
    sink.push(Batch([b"lost"]))
    await server.close()
    await until(lambda: sink._conn is None, what="the loss")
    with pytest.raises(ConnectorError, match="lost"):
        await sink.prepare(2)
    await sink.close()


@run_async
async def test_recover_commits_the_records_txn_and_aborts_this_workers_others(tmp_path):
    server = await sink_server(tmp_path)
    port = server.address[1]
    other = await started_sink(port, resilient=True, worker="w2")
    other.push(Batch([b"[w2]"]))
    others = await other.prepare(1)          # another worker's in-doubt txn: left alone
    sink = await started_sink(port, resilient=True)
    sink.push(Batch([b"first "]))
    record1 = await sink.prepare(1)
    sink.push(Batch([b"second "]))
    await sink.prepare(2)                    # checkpoint 2 failed elsewhere: never committed
    sink.push(Batch([b"unprepared "]))
    await sink.close()                       # the worker dies
    assert (tmp_path / "out.txt").read_bytes() == b""
    restarted = await started_sink(port, resilient=True)
    await restarted.recover(1, record1)
    assert (tmp_path / "out.txt").read_bytes() == b"first "
    assert server.txns.in_doubt() == [others["txn"]]
    restarted.push(Batch([b"replayed"]))
    record = await restarted.prepare(2)
    assert record["ranges"] == [(1, 6, 14)]  # the offset goes on from the record
    await restarted.commit(2, record)
    assert (tmp_path / "out.txt").read_bytes() == b"first replayed"
    await restarted.close()
    await other.close()
    await server.close()


@run_async
async def test_recover_in_place_rewinds_the_stream_after_a_rollback(tmp_path):
    server = await sink_server(tmp_path)
    sink = await started_sink(server.address[1], resilient=True)
    sink.push(Batch([b"kept "]))
    record = await sink.prepare(1)
    await sink.commit(1, record)
    sink.push(Batch([b"undone "]))           # sent after checkpoint 1, then the cluster rolls back
    await sink.recover(1, record)
    sink.push(Batch([b"again"]))
    await sink.commit(2, await sink.prepare(2))
    assert (tmp_path / "out.txt").read_bytes() == b"kept again"
    await sink.close()
    await server.close()


@run_async
async def test_sink_gives_up_connecting_with_a_line_naming_the_address(tmp_path, monkeypatch):
    monkeypatch.setattr(ConnectorSink, "CONNECT_FOR", 0.3)
    server = await sink_server(tmp_path)
    port = server.address[1]
    await server.close()
    with pytest.raises(OSError, match=f"cannot connect to 127.0.0.1:{port} for 0 s.*sink_server"):
        await started_sink(port, resilient=True)


@run_async
async def test_sink_with_a_wrong_cookie_is_refused(tmp_path):
    server = await sink_server(tmp_path)
    config = SinkConnectorConfig("out", ENCODER, None, server.address[1], "guess")
    with pytest.raises(ConnectorError, match="refused the handshake: wrong cookie"):
        await ConnectorSink(config, SinkCtx(True)).start()
    await server.close()


def test_txn_log_ignores_a_torn_record_and_truncates_an_unlogged_commit(tmp_path):
    out = tmp_path / "out.txt"
    log = TxnLog(str(out), str(tmp_path))
    log.prepare("w:c1", "w", [(1, 0, 3)], b"abc")
    log.prepare("w:c2", "w", [(1, 3, 5)], b"de")
    assert log.commit("w:c1") == "committed"
    log.close()
    with open(log.path, "ab") as handle:     # killed in the middle of logging c2's commit
        handle.write(struct.pack(">II", 50, 0) + b"C\x00\x04w:c2")
    with open(out, "ab") as handle:          # after c2's bytes reached the output
        handle.write(b"de")
    again = TxnLog(str(out), str(tmp_path))
    assert again.in_doubt() == ["w:c2"] and out.read_bytes() == b"abc"
    assert again.commit("w:c2") == "committed" and again.commit("w:c2") == "already"
    assert again.commit("w:c1") == "already" and out.read_bytes() == b"abcde"
    assert again.committed_end == {"w": 5}
    again.close()


def start_server_process(tmp_path, port=0):
    proc = subprocess.Popen(
        [sys.executable, "-m", "wallaroo.experimental.sink_server", "--host", "127.0.0.1",
         "--port", str(port), "--cookie", COOKIE, "--out", str(tmp_path / "out.txt"),
         "--log-dir", str(tmp_path / "logs")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, text=True)
    line = proc.stdout.readline()
    assert line.startswith("listening on 127.0.0.1:"), (line, proc.stderr.read())
    return proc, int(line.rsplit(":", 1)[1])


def test_a_sink_server_killed_with_sigkill_keeps_its_phase1_decisions(tmp_path):
    proc, port = start_server_process(tmp_path)
    try:
        async def before_the_kill():
            sink = await started_sink(port, resilient=True)
            sink.push(Batch([b"one ", b"two "]))
            record1 = await sink.prepare(1)
            await sink.commit(1, record1)
            sink.push(Batch([b"three "]))
            record2 = await sink.prepare(2)       # voted yes, then the server dies
            sink.push(Batch([b"four "]))
            await sink.prepare(3)
            await sink.close()
            return record2
        record2 = asyncio.run(asyncio.wait_for(before_the_kill(), 5))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=5)
        with open(tmp_path / "logs" / "out.txt.txnlog", "ab") as handle:
            handle.write(b"\x00\x00\x01\x00torn")   # a record cut short by the kill
        proc, port = start_server_process(tmp_path, port)
        assert (tmp_path / "out.txt").read_bytes() == b"one two "

        async def after_the_restart():
            sink = await started_sink(port, resilient=True)
            await sink.recover(2, record2)       # restore checkpoint 2: commit it, abort 3
            sink.push(Batch([b"five"]))
            await sink.commit(3, await sink.prepare(3))
            await sink.close()
        asyncio.run(asyncio.wait_for(after_the_restart(), 5))
        assert (tmp_path / "out.txt").read_bytes() == b"one two three five"
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=5)
    assert "ignoring a torn or corrupt record" in err


# -- send_lines ---------------------------------------------------------------------------

def send_lines(port, path, *extra):
    return subprocess.run(
        [sys.executable, "-m", "wallaroo.experimental.send_lines", "--host", "127.0.0.1",
         "--port", str(port), "--cookie", COOKIE, "--file", str(path), *extra],
        capture_output=True, text=True, timeout=5, cwd=ROOT)


@run_async
async def test_send_lines_sends_every_line_and_ends_the_stream(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text("alpha\nbeta\n\ngamma é\n")
    source, ctx = await started_source(max_credits=3, refill=1)
    result = await asyncio.to_thread(send_lines, source.address[1], path, "--stream-name", "in")
    assert result.returncode == 0, result.stderr
    assert ctx.values == [b"alpha", b"beta", b"", "gamma é".encode()]
    assert source.position() == {stream_id_for("in"): 4}
    assert "sent EOS" in result.stderr and source._owner == {}
    await source.stop()


@run_async
async def test_send_lines_resumes_after_the_last_line_the_worker_saw(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text("".join(f"line {i}\n" for i in range(1, 11)))
    source, ctx = await started_source(position={stream_id_for("input.txt"): 6})
    result = await asyncio.to_thread(send_lines, source.address[1], path, "--no-wait-acks")
    assert result.returncode == 0, result.stderr
    assert ctx.values == [b"line 7", b"line 8", b"line 9", b"line 10"]
    assert "sending from line 7" in result.stderr
    await source.stop()


def test_send_lines_reports_a_missing_file(tmp_path):
    result = send_lines(1, tmp_path / "nope.txt")
    assert result.returncode == 2 and "no such file" in result.stderr


@run_async
async def test_a_send_lines_killed_midway_and_restarted_sends_each_line_once(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text("".join(f"{i}\n" for i in range(1, 101)))
    source, ctx = await started_source(max_credits=5, refill=2)
    argv = [sys.executable, "-m", "wallaroo.experimental.send_lines", "--port",
            str(source.address[1]), "--cookie", COOKIE, "--file", str(path), "--rate", "200"]
    first = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, stderr=subprocess.DEVNULL)
    await until(lambda: len(ctx.values) >= 20, timeout=3, what="the first lines")
    first.kill()
    await first.wait()
    assert len(ctx.values) < 100
    second = await asyncio.create_subprocess_exec(*argv[:-2], cwd=ROOT,
                                                  stderr=subprocess.DEVNULL)
    assert await second.wait() == 0
    assert ctx.values == [b"%d" % i for i in range(1, 101)]
    await source.stop()


@run_async
async def test_the_sink_closes_the_gate_while_the_server_does_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(ConnectorSink, "HIGH_WATER", 64 * 1024)
    monkeypatch.setattr(ConnectorSink, "LOW_WATER", 16 * 1024)
    server = await sink_server(tmp_path)
    sink = await started_sink(server.address[1], resilient=True)
    await until(lambda: server._connections, what="the server's side")
    for conn in server._connections:
        conn.transport.pause_reading()
    chunk = Batch([b"x" * 65536] * 16)
    for _ in range(512):                 # at most 512 MiB: the kernel buffers fill long before
        sink.push(chunk)
        if sink.ctx.flow.paused:
            break
        await asyncio.sleep(0)
    assert sink.ctx.flow.paused
    for conn in server._connections:
        conn.transport.resume_reading()
    await until(lambda: not sink.ctx.flow.paused, what="the gate to open")
    await sink.close()
    await server.close()


@run_async
async def test_recover_before_start_connects_once(tmp_path):
    server = await sink_server(tmp_path)
    config = SinkConnectorConfig("out", ENCODER, None, server.address[1], COOKIE)
    sink = ConnectorSink(config, SinkCtx(True))
    await sink.recover(None, None)
    await sink.start()
    assert len(server._connections) == 1
    sink.push(Batch([b"only"]))
    await sink.commit(1, await sink.prepare(1))
    assert (tmp_path / "out.txt").read_bytes() == b"only"
    await sink.close()
    await server.close()


@run_async
async def test_a_fresh_run_against_the_same_sink_server_counts_checkpoints_again(tmp_path):
    server = await sink_server(tmp_path)
    for run in (b"run 1;", b"run 2;"):
        sink = await started_sink(server.address[1], resilient=True)
        await sink.recover(None, None)
        sink.push(Batch([run]))
        await sink.commit(1, await sink.prepare(1))
        await sink.close()
    assert (tmp_path / "out.txt").read_bytes() == b"run 1;run 2;"
    await server.close()
