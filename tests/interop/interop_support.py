"""Helpers shared by the interop tests: waiting, a stomp.py wrapper and raw STOMP clients.

stomp.py is used wherever it can produce the traffic; :class:`RawConnection` speaks the wire
format directly (plain TCP sockets, or websocket-client for WebSocket) for the inputs a
well-behaved client library refuses to send: garbage, unknown commands, missing headers,
oversized frames and silence after promising heart-beats.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field

import stomp
import websocket

#: How long any positive expectation ("this frame arrives") may take before the test fails.
TIMEOUT = 5.0

#: How long a negative expectation ("this frame does NOT arrive") is watched for.
QUIET_WINDOW = 0.5

#: The broker's documented frame limit (1 MiB, headers and body together).
MAX_FRAME_BYTES = 1024 * 1024

#: Credentials sent on every CONNECT. The broker lets ``guest``/``guest`` in from loopback
#: (outside game-room destinations); override with STOMP_LOGIN / STOMP_PASSCODE.
LOGIN = os.environ.get("STOMP_LOGIN", "guest")
PASSCODE = os.environ.get("STOMP_PASSCODE", "guest")

#: The WebSocket subprotocols the broker is documented to accept, best first.
WS_SUBPROTOCOLS = ["v12.stomp", "v11.stomp", "v10.stomp"]


def wait_for(cond, timeout=TIMEOUT, interval=0.02, what=None):
    """Polls ``cond()`` until it is truthy and returns its value; fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or cond}")
        time.sleep(interval)


def stays_false(cond, duration=QUIET_WINDOW, interval=0.02, what=None):
    """Asserts ``cond()`` stays falsy for ``duration`` seconds (for "nothing arrives" checks)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if cond():
            raise AssertionError(f"unexpectedly became true: {what or cond}")
        time.sleep(interval)


def chat_both_ways(page, conn, ticket, heard, out_text, back_text, seq):
    """The browser page's chat (typed after Enter) reaches a stomp.py player, and that
    player's chat (`seq`, to its ticket's inbox) shows in the page's log."""
    page.keyboard.press("Enter")
    page.keyboard.type(out_text)
    page.keyboard.press("Enter")
    wait_for(lambda: any(out_text in m.body for m in heard.messages), what="the browser's chat")
    conn.send(ticket["inbox"], json.dumps({"type": "chat", "text": back_text, "seq": seq}), content_type="application/json")
    page.locator("#log", has_text=back_text).wait_for()


def unique(prefix="t"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------------------
# stomp.py
# --------------------------------------------------------------------------------------


class Collector(stomp.ConnectionListener):
    """Records everything a stomp.py connection receives, thread-safely."""

    def __init__(self):
        self.lock = threading.Lock()
        self.connected = None
        self.messages = []
        self.receipts = []
        self.errors = []
        self.heartbeats = 0
        self.disconnected = False

    def on_connected(self, frame):
        with self.lock:
            self.connected = frame

    def on_message(self, frame):
        with self.lock:
            self.messages.append(frame)

    def on_receipt(self, frame):
        with self.lock:
            self.receipts.append(frame.headers.get("receipt-id"))

    def on_error(self, frame):
        with self.lock:
            self.errors.append(frame)

    def on_heartbeat(self):
        with self.lock:
            self.heartbeats += 1

    def on_disconnected(self):
        with self.lock:
            self.disconnected = True

    def snapshot(self):
        with self.lock:
            return list(self.messages)


class StompClient:
    """A connected stomp.py connection (TCP or WebSocket) plus what it has received."""

    def __init__(self, conn, listener, transport):
        self.conn = conn
        self.listener = listener
        self.transport = transport
        self._sub_ids = 0
        #: How many received messages the test has waited for (and so accounted for).
        self.consumed = 0

    # -- sending -------------------------------------------------------------------------

    def subscribe(self, destination, ack="auto", id=None, headers=None, wait=True):
        """Subscribes and (by default) waits for the broker's RECEIPT, so it is in effect."""
        if id is None:
            self._sub_ids += 1
            id = f"sub-{self._sub_ids}"
        receipt = unique("sub-receipt") if wait else None
        extra = dict(headers or {})
        if receipt:
            extra["receipt"] = receipt
        self.conn.subscribe(destination, id=id, ack=ack, headers=extra)
        if receipt:
            self.wait_receipt(receipt)
        return id

    def send(self, destination, body, headers=None, wait=True, **kw):
        """Sends and (by default) waits for the RECEIPT, so the broker has the message."""
        extra = dict(headers or {})
        receipt = unique("send-receipt") if wait else None
        if receipt:
            extra["receipt"] = receipt
        self.conn.send(destination, body, headers=extra, **kw)
        if receipt:
            self.wait_receipt(receipt)

    def ack(self, message, **kw):
        self.conn.ack(message.headers["ack"], **kw)

    def nack(self, message, **kw):
        self.conn.nack(message.headers["ack"], **kw)

    def sync(self):
        """Round-trips a RECEIPT: every frame sent before it has been processed by the broker."""
        receipt = unique("sync")
        # BEGIN+ABORT of a throwaway transaction is a no-op that any STOMP broker answers.
        tx = unique("sync-tx")
        self.conn.begin(transaction=tx)
        self.conn.abort(transaction=tx, headers={"receipt": receipt})
        self.wait_receipt(receipt)

    # -- receiving -----------------------------------------------------------------------

    def wait_receipt(self, receipt_id, timeout=TIMEOUT):
        wait_for(
            lambda: receipt_id in self.listener.receipts or self.listener.errors,
            timeout,
            what=f"RECEIPT {receipt_id}",
        )
        assert not self.listener.errors, f"broker sent ERROR: {describe_errors(self.listener.errors)}"

    def messages(self):
        return self.listener.snapshot()

    def wait_messages(self, n, timeout=TIMEOUT):
        """Waits until at least ``n`` MESSAGE frames have arrived; returns all of them."""
        wait_for(
            lambda: len(self.listener.messages) >= n or self.listener.errors,
            timeout,
            what=f"{n} message(s) on {self.transport} (have {len(self.listener.messages)})",
        )
        assert not self.listener.errors, f"broker sent ERROR: {describe_errors(self.listener.errors)}"
        self.consumed = max(self.consumed, n)
        return self.messages()

    def bodies(self):
        return [m.body for m in self.messages()]

    # -- closing -------------------------------------------------------------------------

    def disconnect(self, timeout=TIMEOUT):
        """A graceful DISCONNECT: waits for its RECEIPT and for the connection to close."""
        if not self.conn.is_connected():
            return
        receipt = unique("bye")
        self.conn.disconnect(receipt=receipt)
        wait_for(lambda: receipt in self.listener.receipts, timeout, what="DISCONNECT receipt")
        wait_for(lambda: self.listener.disconnected, timeout, what="connection closed after DISCONNECT")

    def drop(self, timeout=TIMEOUT):
        """Kills the connection without DISCONNECT (as a crashed client would)."""
        sock = self.conn.transport.socket
        raw = sock.sock if self.transport == "ws" else sock
        try:
            raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        wait_for(lambda: self.listener.disconnected, timeout, what="stomp.py to notice the drop")

    def close_quietly(self):
        try:
            if self.conn.is_connected():
                self.conn.disconnect()
        except Exception:
            pass
        try:
            self.conn.transport.running = False
            self.conn.transport.disconnect_socket()
        except Exception:
            pass


def describe_errors(errors):
    return "; ".join(f"{e.headers.get('message')!r} {e.body!r}" for e in errors)


def make_stomp_connection(server, transport, heartbeats=(0, 0), auto_decode=True, ws_binary=True):
    """A stomp.py connection (not yet connected) for ``transport`` ("tcp" or "ws").

    ``ws_binary`` picks binary (default: any body can be sent) or text WebSocket messages.
    """
    common = dict(
        heartbeats=heartbeats,
        auto_decode=auto_decode,
        reconnect_attempts_max=1,
        timeout=TIMEOUT,
    )
    if transport == "tcp":
        return stomp.Connection12([(server.host, server.tcp_port)], **common)
    if transport == "ws":
        return stomp.WSStompConnection(
            [(server.host, server.http_port)],
            ws_path="/ws",
            binary_mode=ws_binary,
            header=[f"Sec-WebSocket-Protocol: {', '.join(WS_SUBPROTOCOLS)}"],
            **common,
        )
    raise ValueError(transport)


# --------------------------------------------------------------------------------------
# The raw wire format
# --------------------------------------------------------------------------------------


@dataclass
class Frame:
    command: str
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    header_list: list = field(default_factory=list)


_UNESCAPED_COMMANDS = {"CONNECT", "STOMP", "CONNECTED"}


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n").replace(":", "\\c")


def _unescape(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            out.append({"\\": "\\", "n": "\n", "r": "\r", "c": ":"}.get(s[i + 1], "\\" + s[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def encode_frame(command, headers=None, body=b"", content_length=True):
    """Encodes a STOMP 1.2 frame (headers escaped except on CONNECT/STOMP)."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    headers = list((headers or {}).items())
    if content_length and body and not any(k == "content-length" for k, _ in headers):
        headers.append(("content-length", str(len(body))))
    esc = (lambda s: s) if command in _UNESCAPED_COMMANDS else _escape
    lines = [command] + [f"{esc(k)}:{esc(str(v))}" for k, v in headers]
    return ("\n".join(lines) + "\n\n").encode("utf-8") + body + b"\x00"


def parse_frame(buf: bytes):
    """Returns ``(frame_or_None, consumed)``; frame None with consumed>0 means heart-beats.

    Returns ``(None, 0)`` when ``buf`` does not yet hold a whole frame.
    """
    i = 0
    while i < len(buf) and buf[i : i + 1] in (b"\n", b"\r"):
        if buf[i : i + 1] == b"\r" and buf[i + 1 : i + 2] != b"\n":
            break
        i += 1
    if i:
        return None, i
    end = buf.find(b"\n\n")
    crlf_end = buf.find(b"\r\n\r\n")
    if end < 0 and crlf_end < 0:
        return None, 0
    if crlf_end >= 0 and (end < 0 or crlf_end < end):
        head, body_start = buf[:crlf_end], crlf_end + 4
    else:
        head, body_start = buf[:end], end + 2
    lines = head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    command = lines[0]
    unesc = (lambda s: s) if command in _UNESCAPED_COMMANDS else _unescape
    header_list = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        header_list.append((unesc(name), unesc(value)))
    headers = {}
    for k, v in header_list:
        headers.setdefault(k, v)
    if "content-length" in headers:
        n = int(headers["content-length"])
        if len(buf) < body_start + n + 1:
            return None, 0
        body = buf[body_start : body_start + n]
        consumed = body_start + n + 1
    else:
        nul = buf.find(b"\x00", body_start)
        if nul < 0:
            return None, 0
        body = buf[body_start:nul]
        consumed = nul + 1
    return Frame(command, headers, body, header_list), consumed


class Closed(Exception):
    """The peer closed the connection."""


class RawConnection:
    """A STOMP connection driven byte by byte, over plain TCP or WebSocket."""

    def __init__(self, server, transport, subprotocols=None):
        self.transport = transport
        self.buf = b""
        self.eof = False
        self.heartbeats = 0
        if transport == "tcp":
            self.sock = socket.create_connection((server.host, server.tcp_port), timeout=TIMEOUT)
            self.ws = None
        else:
            self.ws = websocket.create_connection(
                server.ws_url,
                subprotocols=subprotocols or WS_SUBPROTOCOLS,
                timeout=TIMEOUT,
            )
            self.sock = None

    @property
    def subprotocol(self):
        return self.ws.subprotocol if self.ws else None

    def send(self, data: bytes):
        if self.ws:
            self.ws.send_binary(data)
        else:
            self.sock.sendall(data)

    def send_frame(self, command, headers=None, body=b"", **kw):
        self.send(encode_frame(command, headers, body, **kw))

    def _recv(self, timeout):
        """One chunk of bytes; ``b""`` at end of stream; raises ``TimeoutError``."""
        timeout = max(timeout, 0.001)
        if self.ws:
            self.ws.settimeout(timeout)
            try:
                while True:
                    opcode, data = self.ws.recv_data(control_frame=True)
                    if opcode == websocket.ABNF.OPCODE_CLOSE:
                        return b""
                    if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                        return data
            except websocket.WebSocketTimeoutException as e:
                raise TimeoutError from e
            except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
                return b""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536)
        except socket.timeout as e:
            raise TimeoutError from e
        except ConnectionError:
            return b""

    def read_frame(self, timeout=TIMEOUT):
        """The next frame (heart-beats are counted and skipped). Raises Closed or TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            while self.buf:
                frame, used = parse_frame(self.buf)
                if not used:
                    break
                if frame is None:
                    self.heartbeats += 1
                self.buf = self.buf[used:]
                if frame is not None:
                    return frame
            if self.eof:
                raise Closed(f"connection closed (unparsed bytes: {self.buf[:200]!r})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no frame within {timeout}s")
            chunk = self._recv(remaining)
            if not chunk:
                self.eof = True
            self.buf += chunk

    def connect(self, headers=None):
        """Sends CONNECT and returns the CONNECTED frame."""
        h = {"accept-version": "1.2", "host": "localhost", "login": LOGIN, "passcode": PASSCODE}
        h.update(headers or {})
        self.send_frame("CONNECT", h)
        frame = self.read_frame()
        assert frame.command == "CONNECTED", f"expected CONNECTED, got {frame}"
        return frame

    def read_until_closed(self, timeout=TIMEOUT):
        """Reads frames until the server closes the connection; returns them.

        Fails if the connection is still open after ``timeout`` seconds.
        """
        frames = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                frames.append(self.read_frame(max(deadline - time.monotonic(), 0.001)))
            except Closed:
                return frames
            except TimeoutError:
                raise AssertionError(
                    f"server did not close the {self.transport} connection within {timeout}s; "
                    f"frames so far: {frames}"
                ) from None

    def close(self):
        try:
            if self.ws:
                self.ws.close(timeout=0.5)
            else:
                self.sock.close()
        except Exception:
            pass


# --------------------------------------------------------------------------------------
# The lobby's REST API
# --------------------------------------------------------------------------------------


def post(srv, path, body, bearer=None):
    request = urllib.request.Request(
        f"http://{srv.host}:{srv.http_port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {bearer}"} if bearer else {})},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read()
        return json.loads(text) if text else None


def join_over_stomp(srv, room, name):
    """Joins ``room`` as ``name`` through the lobby and plays over stomp.py (TCP),
    listening to the room and to itself: the ticket, the connection and what it heard."""
    ticket = post(srv, f"/rooms/{room}/join", {"name": name})
    conn = stomp.Connection12([(srv.host, srv.tcp_port)], heartbeats=(0, 0))
    heard = Collector()
    conn.set_listener("heard", heard)
    conn.connect(username=ticket["login"], passcode=ticket["token"], wait=True)
    conn.subscribe(ticket["topic"], id="room", ack="auto")
    conn.subscribe(ticket["private"], id="me", ack="auto")
    return ticket, conn, heard
