"""Interop: the embedded STOMP 1.2 broker against stomp.py 9.0.0 and raw sockets.

Every test runs over plain TCP and over STOMP-over-WebSocket (see conftest.py).
"""

from __future__ import annotations

import threading
import time

import pytest

from interop_support import (
    LOGIN,
    MAX_FRAME_BYTES,
    PASSCODE,
    Closed,
    describe_errors,
    encode_frame,
    stays_false,
    unique,
    wait_for,
)

UTF8_BODY = "héllo wörld — ünïcödé ☃ 日本語 🎮 Ω≈ç√"
BINARY_BODY = bytes(range(256)) * 3 + b"\x00\x00tail\x00"  # NULs, invalid UTF-8, NUL at the end


def assert_nothing_more(client, queue, sender=None):
    """Proves ``client`` got nothing on ``queue`` beyond the messages the test waited for.

    Queues are FIFO and redeliveries go back to their original place, so if a fresh
    sentinel is the next message after those the test accounted for (``client.consumed``),
    nothing else was delivered or left waiting.
    """
    sender = sender or client
    before = client.consumed
    sentinel = unique("sentinel")
    sender.send(queue, sentinel)
    msgs = client.wait_messages(before + 1)
    nxt = msgs[before]
    assert nxt.body == sentinel, f"expected only the sentinel, got {nxt.body!r} {nxt.headers}"
    assert "redelivered" not in nxt.headers
    stays_false(lambda: len(client.messages()) > before + 1, what="extra messages after the sentinel")


def assert_server_alive(stomp_client, queue):
    """A fresh client can still connect, send and receive."""
    c = stomp_client()
    c.subscribe(queue + "-alive")
    c.send(queue + "-alive", "still alive")
    assert c.wait_messages(1)[0].body == "still alive"
    c.disconnect()


def error_frames(frames):
    return [f for f in frames if f.command == "ERROR"]


# --------------------------------------------------------------------------------------
# Connecting
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["STOMP", "CONNECT"])
def test_connect_returns_connected_1_2_with_server_header(stomp_client, command):
    c = stomp_client(with_connect_command=(command == "CONNECT"))
    h = c.listener.connected.headers
    assert h.get("version") == "1.2"
    assert h.get("server"), f"CONNECTED lacks a server header: {h}"
    # STOMP 1.2: server = name ["/" version]
    assert " " not in h["server"].split("/")[0]
    assert c.conn.is_connected()
    c.disconnect()


def test_raw_connect_negotiates_version_and_subprotocol(raw_client, transport):
    r = raw_client()
    if transport == "ws":
        assert r.subprotocol == "v12.stomp", "the best offered WebSocket subprotocol is chosen"
    connected = r.connect({"accept-version": "1.0,1.1,1.2", "heart-beat": "0,0"})
    assert connected.headers["version"] == "1.2"
    assert connected.headers.get("server")

    older = raw_client()
    assert older.connect({"accept-version": "1.0,1.1"}).headers["version"] == "1.1"


def test_unsupported_version_is_refused(raw_client):
    r = raw_client()
    r.send_frame("CONNECT", {"accept-version": "9.9", "host": "localhost", "login": LOGIN, "passcode": PASSCODE})
    frames = r.read_until_closed()
    errors = error_frames(frames)
    assert errors and not [f for f in frames if f.command == "CONNECTED"], frames
    assert "version" in errors[0].headers.get("message", "").lower()


# --------------------------------------------------------------------------------------
# Sending and receiving
# --------------------------------------------------------------------------------------


def test_send_receive_utf8_body(stomp_client, queue):
    c = stomp_client()
    c.subscribe(queue)
    text_producer = stomp_client(ws_binary=False)  # over WebSocket: text messages
    text_producer.send(queue, UTF8_BODY, headers={"x-note": "a:b\\c\nd é"})
    (m,) = c.wait_messages(1)
    assert m.body == UTF8_BODY
    assert m.headers["destination"] == queue
    assert m.headers.get("message-id")
    assert m.headers.get("subscription")
    assert m.headers["x-note"] == "a:b\\c\nd é", "header escaping must round-trip"
    assert int(m.headers["content-length"]) == len(UTF8_BODY.encode("utf-8"))


def test_send_receive_binary_body_with_nul_bytes(stomp_client, queue):
    producer = stomp_client()
    consumer = stomp_client(auto_decode=False)
    consumer.subscribe(queue)
    producer.send(queue, BINARY_BODY, content_type="application/octet-stream")
    producer.send(queue, b"second")
    m1, m2 = consumer.wait_messages(2)
    assert m1.body == BINARY_BODY
    assert int(m1.headers["content-length"]) == len(BINARY_BODY)
    assert m1.headers.get("content-type") == "application/octet-stream"
    assert m2.body == b"second", "the frame after a NUL-laden body must parse cleanly"


def test_raw_binary_body_round_trip(raw_client, queue):
    """The same check without stomp.py's parser in the way: bytes in, the same bytes out."""
    r = raw_client()
    r.connect()
    r.send_frame("SUBSCRIBE", {"destination": queue, "id": "s", "receipt": "r1"})
    assert r.read_frame().headers.get("receipt-id") == "r1"
    r.send_frame("SEND", {"destination": queue}, BINARY_BODY)
    m = r.read_frame()
    assert m.command == "MESSAGE"
    assert m.body == BINARY_BODY


# --------------------------------------------------------------------------------------
# Acknowledgement modes
# --------------------------------------------------------------------------------------


def test_ack_auto_nothing_redelivered(stomp_client, queue):
    producer = stomp_client()
    consumer = stomp_client()
    consumer.subscribe(queue, ack="auto")
    for i in range(3):
        producer.send(queue, f"m{i}")
    msgs = consumer.wait_messages(3)
    assert [m.body for m in msgs] == ["m0", "m1", "m2"]
    assert all("ack" not in m.headers for m in msgs), "auto mode needs no ack header"
    consumer.disconnect()

    again = stomp_client()
    again.subscribe(queue, ack="auto")
    assert_nothing_more(again, queue, sender=producer)


def test_ack_client_is_cumulative(stomp_client, queue):
    producer = stomp_client()
    consumer = stomp_client()
    consumer.subscribe(queue, ack="client")
    for i in range(4):
        producer.send(queue, f"m{i}")
    msgs = consumer.wait_messages(4)
    assert [m.body for m in msgs] == ["m0", "m1", "m2", "m3"]
    assert all(m.headers.get("ack") for m in msgs)
    # Acking m2 acknowledges m0 and m1 too; only m3 stays unacknowledged.
    consumer.ack(msgs[2])
    consumer.sync()
    consumer.disconnect()

    again = stomp_client()
    again.subscribe(queue, ack="client")
    (m,) = again.wait_messages(1)
    assert m.body == "m3", "only the message after the cumulative ack may come back"
    assert m.headers.get("redelivered") == "true"
    again.ack(m)
    assert_nothing_more(again, queue, sender=producer)


def test_ack_client_of_last_message_acks_everything(stomp_client, queue):
    producer = stomp_client()
    consumer = stomp_client()
    consumer.subscribe(queue, ack="client")
    for i in range(3):
        producer.send(queue, f"m{i}")
    msgs = consumer.wait_messages(3)
    consumer.ack(msgs[-1])
    consumer.sync()
    consumer.disconnect()

    again = stomp_client()
    again.subscribe(queue, ack="client")
    assert_nothing_more(again, queue, sender=producer)


def test_ack_client_individual_acks_only_that_message(stomp_client, queue):
    producer = stomp_client()
    consumer = stomp_client()
    consumer.subscribe(queue, ack="client-individual")
    for i in range(4):
        producer.send(queue, f"m{i}")
    msgs = consumer.wait_messages(4)
    consumer.ack(msgs[1])
    consumer.ack(msgs[3])
    consumer.sync()
    consumer.disconnect()

    again = stomp_client()
    again.subscribe(queue, ack="client-individual")
    m0, m2 = again.wait_messages(2)
    assert [m0.body, m2.body] == ["m0", "m2"], "exactly the unacked ones, in order"
    assert m0.headers.get("redelivered") == "true" and m2.headers.get("redelivered") == "true"
    again.ack(m0)
    again.ack(m2)
    assert_nothing_more(again, queue, sender=producer)


def test_nack_redelivers_with_redelivered_header(stomp_client, queue):
    c = stomp_client()
    c.subscribe(queue, ack="client-individual")
    c.send(queue, "first")
    c.send(queue, "second")
    first, second = c.wait_messages(2)
    assert "redelivered" not in first.headers
    c.nack(first)
    again = c.wait_messages(3)[2]
    assert again.body == "first"
    assert again.headers.get("redelivered") == "true"
    assert again.headers.get("message-id") == first.headers.get("message-id")
    c.ack(again)
    c.ack(second)
    assert_nothing_more(c, queue)


def test_unknown_ack_id_is_ignored(stomp_client, queue):
    c = stomp_client()
    c.subscribe(queue, ack="client-individual")
    c.conn.ack("no-such-ack-id-42", receipt="r-unknown")
    c.wait_receipt("r-unknown")
    c.send(queue, "after")
    assert c.wait_messages(1)[0].body == "after"
    assert c.conn.is_connected() and not c.listener.errors


@pytest.mark.parametrize("how", ["disconnect", "drop"])
def test_unacked_messages_redelivered_in_order_after_consumer_leaves(stomp_client, queue, how):
    producer = stomp_client()
    first = stomp_client()
    first.subscribe(queue, ack="client-individual")
    bodies = [f"m{i}" for i in range(6)]
    for b in bodies:
        producer.send(queue, b)
    assert [m.body for m in first.wait_messages(6)] == bodies

    second = stomp_client()
    second.subscribe(queue, ack="client-individual")
    stays_false(lambda: second.messages(), what="in-flight messages given to a second consumer")

    getattr(first, how)()  # DISCONNECT, or a dropped socket
    msgs = second.wait_messages(6)
    assert [m.body for m in msgs] == bodies, "redelivered in their original order"
    assert all(m.headers.get("redelivered") == "true" for m in msgs)
    for m in msgs:
        second.ack(m)
    assert_nothing_more(second, queue, sender=producer)


def test_unsubscribe_hands_unacked_messages_to_other_consumers(stomp_client, queue):
    producer = stomp_client()
    a = stomp_client()
    sub = a.subscribe(queue, ack="client")
    producer.send(queue, "m0")
    producer.send(queue, "m1")
    a.wait_messages(2)
    b = stomp_client()
    b.subscribe(queue, ack="client")
    a.conn.unsubscribe(id=sub, headers={"receipt": "unsub"})
    a.wait_receipt("unsub")
    msgs = b.wait_messages(2)
    assert [m.body for m in msgs] == ["m0", "m1"]
    assert all(m.headers.get("redelivered") == "true" for m in msgs)
    producer.send(queue, "m2")
    assert b.wait_messages(3)[2].body == "m2"
    assert len(a.messages()) == 2, "an unsubscribed consumer gets nothing more"


def test_client_ack_is_cumulative_only_within_its_subscription(stomp_client, queue):
    producer = stomp_client()
    consumer = stomp_client()
    qa, qb = queue + "-a", queue + "-b"
    consumer.subscribe(qa, ack="client", id="A")
    consumer.subscribe(qb, ack="client", id="B")
    producer.send(qa, "a1")
    consumer.wait_messages(1)
    producer.send(qb, "b1")
    consumer.wait_messages(2)
    producer.send(qa, "a2")
    msgs = consumer.wait_messages(3)
    assert [m.body for m in msgs] == ["a1", "b1", "a2"]
    consumer.ack(msgs[2])  # acks a1 and a2, not b1
    consumer.sync()
    consumer.disconnect()

    again = stomp_client()
    again.subscribe(qb, ack="client")
    m = again.wait_messages(1)[0]
    assert m.body == "b1" and m.headers.get("redelivered") == "true"
    again.subscribe(qa, ack="auto")
    assert_nothing_more(again, qa, sender=producer)


# --------------------------------------------------------------------------------------
# Queues: competing consumers, prefetch
# --------------------------------------------------------------------------------------


def test_competing_consumers_share_without_duplicates(stomp_client, queue):
    producer = stomp_client()
    a, b = stomp_client(), stomp_client()
    a.subscribe(queue)
    b.subscribe(queue)
    n = 20
    for i in range(n):
        producer.send(queue, f"{i:03d}", wait=(i == n - 1))
    wait_for(lambda: len(a.messages()) + len(b.messages()) >= n, what="all messages consumed")
    stays_false(lambda: len(a.messages()) + len(b.messages()) > n, what="duplicate deliveries")
    got_a, got_b = a.bodies(), b.bodies()
    assert sorted(got_a + got_b) == [f"{i:03d}" for i in range(n)], "each message exactly once"
    assert not set(got_a) & set(got_b)
    assert got_a and got_b, f"both consumers must get work: a={got_a} b={got_b}"
    assert abs(len(got_a) - len(got_b)) <= 1, f"round-robin: a={len(got_a)} b={len(got_b)}"
    assert got_a == sorted(got_a) and got_b == sorted(got_b), "each consumer sees FIFO order"


def test_prefetch_count_one_holds_next_message_until_ack(stomp_client, queue):
    producer = stomp_client()
    consumer = stomp_client()
    consumer.subscribe(queue, ack="client-individual", headers={"prefetch-count": "1"})
    for b in ["m0", "m1", "m2"]:
        producer.send(queue, b)

    (m0,) = consumer.wait_messages(1)
    assert m0.body == "m0"
    stays_false(lambda: len(consumer.messages()) > 1, what="2nd message delivered before the 1st was acked")

    consumer.ack(m0)
    m1 = consumer.wait_messages(2)[1]
    assert m1.body == "m1"
    stays_false(lambda: len(consumer.messages()) > 2, what="3rd message delivered before the 2nd was acked")

    consumer.ack(m1)
    assert consumer.wait_messages(3)[2].body == "m2"


def test_prefetch_held_message_goes_to_another_consumer(stomp_client, queue):
    """A message held back by prefetch stays in the queue, so a new consumer gets it."""
    producer = stomp_client()
    slow = stomp_client()
    slow.subscribe(queue, ack="client", headers={"prefetch-count": "1"})
    producer.send(queue, "m0")
    producer.send(queue, "m1")
    assert slow.wait_messages(1)[0].body == "m0"

    other = stomp_client()
    other.subscribe(queue, ack="auto")
    assert other.wait_messages(1)[0].body == "m1"
    stays_false(lambda: len(slow.messages()) > 1, what="held message also delivered to the slow consumer")


# --------------------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------------------


def test_topic_fans_out_to_every_subscriber_in_order(stomp_client, topic):
    publisher = stomp_client()
    s1, s2 = stomp_client(), stomp_client()
    s1.subscribe(topic)
    s2.subscribe(topic)
    bodies = [f"event-{i}" for i in range(15)]
    for b in bodies:
        publisher.send(topic, b, wait=False)
    publisher.sync()
    assert [m.body for m in s1.wait_messages(len(bodies))] == bodies
    assert [m.body for m in s2.wait_messages(len(bodies))] == bodies
    stays_false(lambda: len(s1.messages()) > len(bodies) or len(s2.messages()) > len(bodies))
    assert all(m.headers["destination"] == topic for m in s1.messages() + s2.messages())
    assert not publisher.messages(), "a non-subscriber gets nothing"


def test_topic_late_subscriber_gets_only_new_messages(stomp_client, topic):
    publisher = stomp_client()
    early = stomp_client()
    early.subscribe(topic)
    publisher.send(topic, "before")
    early.wait_messages(1)
    late = stomp_client()
    late.subscribe(topic)
    publisher.send(topic, "after")
    assert [m.body for m in late.wait_messages(1)] == ["after"]
    assert [m.body for m in early.wait_messages(2)] == ["before", "after"]


# --------------------------------------------------------------------------------------
# Receipts
# --------------------------------------------------------------------------------------


def test_receipts_on_subscribe_send_and_disconnect(stomp_client, queue):
    c = stomp_client()
    c.conn.subscribe(queue, id="s1", ack="auto", headers={"receipt": "rcpt-sub"})
    c.wait_receipt("rcpt-sub")
    c.conn.send(queue, "hello", headers={"receipt": "rcpt-send"})
    c.wait_receipt("rcpt-send")
    assert c.wait_messages(1)[0].body == "hello"

    c.conn.disconnect(receipt="rcpt-bye")
    wait_for(lambda: "rcpt-bye" in c.listener.receipts, what="RECEIPT for DISCONNECT")
    wait_for(lambda: c.listener.disconnected, what="server closing after the DISCONNECT receipt")
    assert c.listener.receipts[:2] == ["rcpt-sub", "rcpt-send"]
    assert not c.listener.errors


def test_raw_receipt_ids_are_echoed(raw_client, queue):
    r = raw_client()
    r.connect()
    r.send_frame("SUBSCRIBE", {"destination": queue, "id": "1", "receipt": "a:b"})
    f = r.read_frame()
    assert f.command == "RECEIPT" and f.headers.get("receipt-id") == "a:b", f  # escaped colon round-trips
    r.send_frame("DISCONNECT", {"receipt": "bye-77"})
    frames = r.read_until_closed()
    assert [f.headers.get("receipt-id") for f in frames if f.command == "RECEIPT"] == ["bye-77"]


def test_receipts_for_every_client_frame(raw_client, queue):
    r = raw_client()
    r.connect()

    def expect_receipt(rid):
        f = r.read_frame()
        assert f.command == "RECEIPT" and f.headers.get("receipt-id") == rid, f

    r.send_frame("SUBSCRIBE", {"destination": queue, "id": "s", "ack": "client-individual", "receipt": "r-sub"})
    expect_receipt("r-sub")
    r.send_frame("SEND", {"destination": queue, "receipt": "r-send"}, b"one")
    frames = [r.read_frame(), r.read_frame()]  # the MESSAGE and the RECEIPT, in either order
    assert sorted(f.command for f in frames) == ["MESSAGE", "RECEIPT"], frames
    msg = next(f for f in frames if f.command == "MESSAGE")
    assert next(f for f in frames if f.command == "RECEIPT").headers["receipt-id"] == "r-send"
    r.send_frame("NACK", {"id": msg.headers["ack"], "receipt": "r-nack"})
    frames = [r.read_frame(), r.read_frame()]  # RECEIPT and the redelivered MESSAGE
    assert "r-nack" in [f.headers.get("receipt-id") for f in frames], frames
    again = next(f for f in frames if f.command == "MESSAGE")
    assert again.headers.get("redelivered") == "true" and again.body == b"one"
    r.send_frame("BEGIN", {"transaction": "t1", "receipt": "r-begin"})
    expect_receipt("r-begin")
    r.send_frame("ACK", {"id": again.headers["ack"], "transaction": "t1", "receipt": "r-ack"})
    expect_receipt("r-ack")
    r.send_frame("COMMIT", {"transaction": "t1", "receipt": "r-commit"})
    expect_receipt("r-commit")
    r.send_frame("BEGIN", {"transaction": "t2"})
    r.send_frame("ABORT", {"transaction": "t2", "receipt": "r-abort"})
    expect_receipt("r-abort")
    r.send_frame("UNSUBSCRIBE", {"id": "s", "receipt": "r-unsub"})
    expect_receipt("r-unsub")
    r.send_frame("DISCONNECT", {"receipt": "r-bye"})
    frames = r.read_until_closed()
    assert [f.headers.get("receipt-id") for f in frames] == ["r-bye"], frames


def test_error_for_a_frame_with_receipt_names_that_receipt(raw_client):
    """STOMP 1.2: an ERROR caused by a frame with a receipt header SHOULD carry receipt-id."""
    r = raw_client()
    r.connect()
    r.send_frame("SEND", {"destination": "/bogus/z", "receipt": "r-77"}, b"x")
    errors = error_frames(r.read_until_closed())
    assert errors and errors[0].headers.get("receipt-id") == "r-77", errors


# --------------------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------------------


def test_broker_headers_cannot_be_spoofed_and_first_header_wins(raw_client, queue):
    r = raw_client()
    r.connect()
    r.send_frame("SUBSCRIBE", {"destination": queue, "id": "real-sub", "receipt": "r"})
    assert r.read_frame().command == "RECEIPT"
    r.send(
        b"SEND\ndestination:" + queue.encode() + b"\ndestination:/queue/elsewhere\n"
        b"message-id:forged\nsubscription:forged\nredelivered:true\nack:999\n"
        b"x-dup:first\nx-dup:second\n\nbody\x00"
    )
    m = r.read_frame()
    assert m.command == "MESSAGE" and m.body == b"body"
    assert m.headers["destination"] == queue, "the first destination header is the one used"
    assert m.headers["subscription"] == "real-sub"
    assert m.headers["message-id"] != "forged"
    assert "redelivered" not in m.headers and "ack" not in m.headers, m.header_list
    assert m.headers["x-dup"] == "first"


def test_crlf_line_endings_are_accepted(raw_client, queue):
    r = raw_client()
    r.connect()
    r.send(f"SUBSCRIBE\r\ndestination:{queue}\r\nid:s\r\nreceipt:crlf\r\n\r\n\x00\r\n".encode())
    f = r.read_frame()
    assert f.command == "RECEIPT" and f.headers["receipt-id"] == "crlf", f
    r.send(f"SEND\r\ndestination:{queue}\r\nx-h:v\r\n\r\nhello\x00".encode())
    m = r.read_frame()
    assert m.body == b"hello" and m.headers["x-h"] == "v", m


def test_frames_split_across_writes_and_batched_in_one_write(raw_client, queue):
    """Frame boundaries need not match TCP segments or WebSocket messages."""
    r = raw_client()
    r.connect()
    sub = b"SUBSCRIBE\ndestination:" + queue.encode() + b"\nid:s\nreceipt:r0\n\n\x00"
    for i in range(0, len(sub), 7):  # in 7-byte pieces
        r.send(sub[i : i + 7])
        time.sleep(0.01)
    f = r.read_frame()
    assert f.command == "RECEIPT" and f.headers["receipt-id"] == "r0", f
    batch = b"".join(
        b"SEND\ndestination:" + queue.encode() + f"\ncontent-length:3\n\nm{i:02d}\x00\n".encode()
        for i in range(5)
    )
    r.send(batch)  # five frames (and heart-beat EOLs) in one write / one WebSocket message
    assert [r.read_frame().body for _ in range(5)] == [f"m{i:02d}".encode() for i in range(5)]


# --------------------------------------------------------------------------------------
# Heart-beats
# --------------------------------------------------------------------------------------


def test_heartbeating_client_stays_connected_while_idle(stomp_client, queue):
    c = stomp_client(heartbeats=(200, 200))
    sx, sy = (int(x) for x in c.listener.connected.headers["heart-beat"].split(","))
    assert sx > 0 and sy > 0, "the server offers heart-beats"
    idle = 3.0
    time.sleep(idle)  # the point of the test: several seconds of nothing but heart-beats
    assert c.conn.is_connected() and not c.listener.disconnected, "server dropped a heart-beating client"
    assert not c.listener.errors, describe_errors(c.listener.errors)
    # The server must have sent heart-beats: every max(200, sx) ms.
    assert c.listener.heartbeats >= 2, f"only {c.listener.heartbeats} heart-beats in {idle}s"
    c.subscribe(queue)
    c.send(queue, "still here")
    assert c.wait_messages(1)[0].body == "still here"


def test_silent_client_is_closed_after_heartbeat_timeout(raw_client, stomp_client, queue):
    r = raw_client()
    connected = r.connect({"heart-beat": "100,100"})
    sx, sy = (int(x) for x in connected.headers["heart-beat"].split(","))
    expect_ms = max(100, sy)  # the client promised to send at least this often
    t0 = time.monotonic()
    frames = r.read_until_closed(timeout=5.0)
    elapsed = time.monotonic() - t0
    assert elapsed >= expect_ms / 1000 * 0.9, f"closed after {elapsed:.2f}s, before any grace period"
    assert r.heartbeats >= 1, "the server should have heart-beated the client meanwhile"
    assert not [f for f in frames if f.command == "MESSAGE"]
    assert_server_alive(stomp_client, queue)


def test_client_without_heartbeats_is_not_timed_out(raw_client, queue):
    r = raw_client()
    connected = r.connect({"heart-beat": "0,0"})
    sx = int(connected.headers["heart-beat"].split(",")[0])
    time.sleep(2.5 * max(sx, 500) / 1000)  # longer than any heart-beat deadline would be
    assert r.heartbeats == 0, "heart-beats sent to a client that did not ask for them"
    r.send_frame("SUBSCRIBE", {"destination": queue, "id": "1", "receipt": "alive"})
    f = r.read_frame()
    assert f.command == "RECEIPT" and f.headers["receipt-id"] == "alive", f


def test_frame_trickling_in_counts_as_activity(raw_client, queue):
    """Heart-beating is about *data*: "If the receiver does not receive any new data within
    the time window" (STOMP 1.2). A frame that arrives a few bytes at a time, never more
    than 150 ms apart, is a live connection, even if the whole frame takes seconds."""
    r = raw_client()
    connected = r.connect({"heart-beat": "100,100"})
    sy = int(connected.headers["heart-beat"].split(",")[1])
    window = 2 * max(100, sy) / 1000
    frame = encode_frame("SEND", {"destination": queue, "receipt": "slow"}, b"s" * 60)
    pieces = [frame[i : i + 4] for i in range(0, len(frame), 4)]
    assert len(pieces) * 0.15 > 2 * window, "the test must outlast the heart-beat window"
    t0 = time.monotonic()
    hung_up = None
    for piece in pieces:
        try:
            r.send(piece)
        except OSError as e:
            hung_up = e
            break
        time.sleep(0.15)
    took = time.monotonic() - t0
    try:
        f = r.read_frame()
    except Closed:
        f = None
    assert hung_up is None and f is not None and f.command == "RECEIPT", (
        f"bytes arrived every 0.15s (heart-beat window {window:.1f}s), yet after {took:.1f}s "
        f"the server {'hung up (' + str(hung_up) + ')' if hung_up else 'answered'} with "
        f"{f if f is not None else 'nothing'}"
    )


def test_heartbeats_from_raw_client_keep_it_alive(raw_client, queue):
    r = raw_client()
    connected = r.connect({"heart-beat": "100,0"})
    sy = int(connected.headers["heart-beat"].split(",")[1])
    every = max(100, sy) / 1000 / 2
    end = time.monotonic() + 2.5
    while time.monotonic() < end:
        r.send(b"\n")
        time.sleep(every)
    r.send_frame("SUBSCRIBE", {"destination": queue, "id": "1", "receipt": "alive"})
    f = r.read_frame()
    assert f.command == "RECEIPT" and f.headers["receipt-id"] == "alive", f


# --------------------------------------------------------------------------------------
# Protocol errors
# --------------------------------------------------------------------------------------

BAD_FRAMES = {
    "garbage": (b"\xde\xad\xbe\xef this is not STOMP \xff\xfe\n\n\x00", ["malformed", "command"]),
    "unknown-command": (b"FROBNICATE\ndestination:/queue/x\n\nbody\x00", ["FROBNICATE"]),
    "send-to-bogus-destination": (b"SEND\ndestination:/bogus/x\n\nhi\x00", ["/bogus/x"]),
    "send-without-destination": (b"SEND\ncontent-type:text/plain\n\nhi\x00", ["destination"]),
    "subscribe-bad-ack-mode": (b"SUBSCRIBE\ndestination:/queue/x\nid:1\nack:sometimes\n\n\x00", ["ack"]),
    "subscribe-to-bogus-destination": (b"SUBSCRIBE\ndestination:/bogus/y\nid:1\n\n\x00", ["/bogus/y"]),
    "send-to-empty-queue-name": (b"SEND\ndestination:/queue/\n\nhi\x00", ["destination"]),
    "bad-prefetch-count": (b"SUBSCRIBE\ndestination:/queue/x\nid:1\nprefetch-count:lots\n\n\x00", ["prefetch"]),
    "header-without-colon": (b"SEND\ndestination:/queue/x\nno colon here\n\nhi\x00", ["colon"]),
    "bad-escape": (b"SEND\ndestination:/queue/x\nx-h:a\\tb\n\nhi\x00", ["escape"]),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_protocol_violation_gets_error_and_close(raw_client, stomp_client, queue, case):
    data, keywords = BAD_FRAMES[case]
    r = raw_client()
    r.connect()
    r.send(data)
    frames = r.read_until_closed()
    errors = error_frames(frames)
    assert errors, f"no ERROR frame for {case}; got {frames}"
    message = errors[0].headers.get("message", "")
    assert message, "ERROR must carry a message header"
    for word in keywords:
        assert word.lower() in message.lower(), f"message {message!r} should mention {word!r}"
    assert_server_alive(stomp_client, queue)


@pytest.mark.parametrize("first", ["garbage", "SEND"])
def test_bad_first_frame_gets_error_and_close(raw_client, stomp_client, queue, first):
    r = raw_client()
    if first == "garbage":
        r.send(b"\x16\x03\x01\x00\xa5 hello?\n\n\x00")  # e.g. a TLS hello on the plain port
    else:
        r.send(b"SEND\ndestination:/queue/x\n\nhi\x00")  # not CONNECT
    errors = error_frames(r.read_until_closed())
    assert errors and errors[0].headers.get("message"), "a refused connection is told why"
    assert_server_alive(stomp_client, queue)


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "nul-terminated"])
@pytest.mark.parametrize("size", [MAX_FRAME_BYTES + 100, 2 * MAX_FRAME_BYTES], ids=["1MiB+100B", "2MiB"])
def test_oversized_frame_gets_error(raw_client, stomp_client, queue, with_length, size):
    r = raw_client()
    r.connect()
    body = b"x" * size
    frame = (
        f"SEND\ndestination:{queue}\n".encode()
        + (f"content-length:{len(body)}\n".encode() if with_length else b"")
        + b"\n"
        + body
        + b"\x00"
    )

    def push():  # the server may refuse before it has read everything; that is fine
        try:
            r.send(frame)
        except Exception:
            pass

    pusher = threading.Thread(target=push, daemon=True)
    pusher.start()
    frames = r.read_until_closed(timeout=10)
    pusher.join(10)
    errors = error_frames(frames)
    assert errors, f"no ERROR for a {len(frame)}-byte frame; got {frames}"
    message = errors[0].headers.get("message", "").lower()
    assert any(w in message for w in ("limit", "large", "exceed", "size")), message

    # And it was not delivered.
    c = stomp_client()
    c.subscribe(queue)
    assert_nothing_more(c, queue)


def test_frame_just_under_limit_is_accepted(stomp_client, queue):
    c = stomp_client(auto_decode=False)
    c.subscribe(queue)
    body = b"y" * (MAX_FRAME_BYTES - 4096)
    c.send(queue, body)
    (m,) = c.wait_messages(1, timeout=10)
    assert m.body == body


def test_error_on_one_connection_does_not_affect_another(raw_client, stomp_client, queue):
    bystander = stomp_client()
    bystander.subscribe(queue)
    r = raw_client()
    r.connect()
    r.send(b"NOT-A-COMMAND\n\n\x00")
    assert error_frames(r.read_until_closed())
    bystander.send(queue, "unaffected")
    assert bystander.wait_messages(1)[0].body == "unaffected"
    assert not bystander.listener.errors and bystander.conn.is_connected()


# --------------------------------------------------------------------------------------
# Transactions
# --------------------------------------------------------------------------------------


def test_transaction_commit_delivers_only_at_commit(stomp_client, queue):
    producer = stomp_client()
    consumer = stomp_client()
    consumer.subscribe(queue)
    tx = unique("tx")
    producer.conn.begin(transaction=tx)
    producer.send(queue, "tx-1", transaction=tx)
    producer.send(queue, "tx-2", transaction=tx)
    # A message sent outside the transaction overtakes the uncommitted ones.
    producer.send(queue, "outside")
    assert consumer.wait_messages(1)[0].body == "outside"
    stays_false(lambda: len(consumer.messages()) > 1, what="transactional SEND delivered before COMMIT")

    producer.conn.commit(transaction=tx, headers={"receipt": "commit-r"})
    producer.wait_receipt("commit-r")
    assert consumer.bodies()[:1] == ["outside"]
    assert [m.body for m in consumer.wait_messages(3)] == ["outside", "tx-1", "tx-2"]
    assert all("transaction" not in m.headers for m in consumer.messages())


def test_transaction_abort_discards_sends(stomp_client, queue):
    producer = stomp_client()
    consumer = stomp_client()
    consumer.subscribe(queue)
    tx = unique("tx")
    producer.conn.begin(transaction=tx)
    producer.send(queue, "doomed-1", transaction=tx)
    producer.send(queue, "doomed-2", transaction=tx)
    producer.conn.abort(transaction=tx, headers={"receipt": "abort-r"})
    producer.wait_receipt("abort-r")
    assert_nothing_more(consumer, queue, sender=producer)
    assert "doomed-1" not in consumer.bodies() and "doomed-2" not in consumer.bodies()
    # A committed transaction afterwards still works, and an aborted name cannot be committed.
    tx2 = unique("tx")
    producer.conn.begin(transaction=tx2)
    producer.send(queue, "kept", transaction=tx2)
    producer.conn.commit(transaction=tx2)
    assert consumer.wait_messages(2)[1].body == "kept"


@pytest.mark.parametrize("outcome", ["commit", "abort"])
def test_transactional_ack_applies_only_at_commit(stomp_client, queue, outcome):
    producer = stomp_client()
    consumer = stomp_client()
    consumer.subscribe(queue, ack="client-individual")
    producer.send(queue, "m0")
    (m0,) = consumer.wait_messages(1)
    tx = unique("tx")
    consumer.conn.begin(transaction=tx)
    consumer.ack(m0, transaction=tx)
    getattr(consumer.conn, outcome)(transaction=tx)
    consumer.sync()
    consumer.disconnect()

    again = stomp_client()
    again.subscribe(queue, ack="auto")
    if outcome == "abort":  # the ACK was rolled back: m0 is still unacknowledged
        m = again.wait_messages(1)[0]
        assert m.body == "m0" and m.headers.get("redelivered") == "true"
    assert_nothing_more(again, queue, sender=producer)


def test_transaction_open_at_disconnect_is_aborted(stomp_client, queue):
    producer = stomp_client()
    consumer = stomp_client()
    consumer.subscribe(queue)
    tx = unique("tx")
    producer.conn.begin(transaction=tx)
    producer.send(queue, "never", transaction=tx)
    producer.disconnect()
    other = stomp_client()
    assert_nothing_more(consumer, queue, sender=other)


def test_transaction_with_an_invalid_send_delivers_nothing(raw_client, stomp_client, queue):
    """A transaction is all or nothing: if one of its SENDs is refused (at SEND or at
    COMMIT), the valid SENDs in it must not be delivered either."""
    consumer = stomp_client()
    consumer.subscribe(queue)
    r = raw_client()
    r.connect()
    r.send_frame("BEGIN", {"transaction": "t"})
    r.send_frame("SEND", {"destination": queue, "transaction": "t"}, b"valid-but-in-a-failed-tx")
    r.send_frame("SEND", {"destination": "/bogus/q", "transaction": "t"}, b"invalid")
    r.send_frame("COMMIT", {"transaction": "t", "receipt": "commit"})
    frames = r.read_until_closed()
    errors = error_frames(frames)
    assert errors and "/bogus/q" in errors[0].headers.get("message", ""), frames
    assert "commit" not in [f.headers.get("receipt-id") for f in frames if f.command == "RECEIPT"]
    assert_nothing_more(consumer, queue)


def test_commit_of_unknown_transaction_is_an_error(raw_client, stomp_client, queue):
    r = raw_client()
    r.connect()
    r.send_frame("COMMIT", {"transaction": "never-begun"})
    errors = error_frames(r.read_until_closed())
    assert errors and "never-begun" in errors[0].headers.get("message", "")
    assert_server_alive(stomp_client, queue)


# --------------------------------------------------------------------------------------
# Shutdown
# --------------------------------------------------------------------------------------


def test_sigterm_is_graceful_and_keeps_undelivered_messages(server_factory, stomp_client, transport):
    srv = server_factory()
    q = f"/queue/{unique('shutdown')}"
    c = stomp_client(srv=srv)
    for i in range(3):
        c.send(q, f"kept-{i}")  # nobody subscribed: they wait in the queue
    assert srv.terminate(timeout=15) == 0, f"SIGTERM exit code; log:\n{srv.log_tail()}"
    wait_for(lambda: c.listener.disconnected, what="clients disconnected at shutdown")

    again = server_factory(data_dir=srv.data_dir)
    c2 = stomp_client(srv=again)
    c2.subscribe(q)
    assert [m.body for m in c2.wait_messages(3)] == ["kept-0", "kept-1", "kept-2"]
    assert_nothing_more(c2, q)


def test_sigterm_keeps_messages_a_consumer_holds_unacked(server_factory, stomp_client, transport):
    srv = server_factory()
    q = f"/queue/{unique('shutdown-unacked')}"
    producer = stomp_client(srv=srv)
    holder = stomp_client(srv=srv)
    holder.subscribe(q, ack="client-individual")
    for i in range(3):
        producer.send(q, f"held-{i}")
    holder.wait_messages(3)
    holder.ack(holder.messages()[1])
    holder.sync()
    assert srv.terminate(timeout=15) == 0, f"SIGTERM exit code; log:\n{srv.log_tail()}"

    again = server_factory(data_dir=srv.data_dir)
    c2 = stomp_client(srv=again)
    c2.subscribe(q)
    assert [m.body for m in c2.wait_messages(2)] == ["held-0", "held-2"], "unacked messages survive"
    assert_nothing_more(c2, q)
