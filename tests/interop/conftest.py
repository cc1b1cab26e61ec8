"""Fixtures: the real game-server binary, and stomp.py / raw clients over TCP and WebSocket.

Every test that takes ``stomp_client``, ``raw_client`` or ``transport`` runs twice: once
over plain TCP and once over STOMP-over-WebSocket.

The binary is ``$GAME_SERVER_BIN`` or ``<repo>/target/debug/game-server``; build it first
(``cargo build -p game-server``). Run with ``python -m pytest tests/interop -q``.
"""

from __future__ import annotations

import os
import shutil
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from interop_support import (
    LOGIN,
    PASSCODE,
    TIMEOUT,
    Collector,
    RawConnection,
    StompClient,
    make_stomp_connection,
    unique,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
SERVER_BIN = Path(os.environ.get("GAME_SERVER_BIN", REPO / "target" / "debug" / "game-server"))

#: The heart-beat interval the test server offers (ms): small, so heart-beat tests are quick.
SERVER_HEARTBEAT_MS = 500

TRANSPORTS = ["tcp", "ws"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """One running game-server and where to reach it."""

    data_dir: Path
    heartbeat_ms: int = SERVER_HEARTBEAT_MS
    host: str = "127.0.0.1"
    http_port: int = 0
    tcp_port: int = 0
    proc: subprocess.Popen | None = None
    stdout_lines: list = field(default_factory=list)
    #: More command-line arguments, e.g. ["--operator-secret", "…"].
    extra_args: list = field(default_factory=list)
    log_path: Path | None = None
    #: The server's binary: game-server, or a game made by `game-server new`.
    binary: Path = SERVER_BIN
    #: More environment variables, e.g. {"GSL_MAPS": "…"}.
    env: dict = field(default_factory=dict)

    @property
    def ws_url(self):
        return f"ws://{self.host}:{self.http_port}/ws"

    def start(self, attempts=3):
        if not self.binary.exists():
            pytest.exit(f"server binary {self.binary} not found; build it or set GAME_SERVER_BIN", 2)
        last_error = None
        for _ in range(attempts):  # a just-freed port can be taken by someone else; retry
            try:
                self._start_once()
                return self
            except RuntimeError as e:
                last_error = e
        raise RuntimeError(f"game-server did not start: {last_error}")

    def restart(self):
        """Stops the server (SIGTERM) and starts it again on the same ports and data."""
        self.terminate()
        self._start_once(keep_ports=True)
        return self

    def _start_once(self, keep_ports=False):
        if not keep_ports:
            self.http_port, self.tcp_port = free_port(), free_port()
        self.stdout_lines = []
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server-{self.tcp_port}.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                str(self.binary),
                "--listen", f"{self.host}:{self.http_port}",
                "--stomp-listen", f"{self.host}:{self.tcp_port}",
                "--data-dir", str(self.data_dir),
                "--heartbeat-ms", str(self.heartbeat_ms),
                "--guest",  # stomp.py logs in as guest/guest, outside the rooms
                "--log", "info",
                *self.extra_args,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
        )
        log.close()
        ready = threading.Event()

        def pump():  # keeps draining stdout so the server never blocks on a full pipe
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.stdout_lines.append(line)
                if "STOMP/TCP" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 20
        while not ready.wait(0.05):
            if time.monotonic() > deadline:
                break
        banner = "\n".join(self.stdout_lines)
        if self.proc.poll() is not None or f"{self.binary.name} listening:" not in banner:
            self.kill()
            raise RuntimeError(f"exit={self.proc.returncode} stdout={banner!r} log={self.log_tail()!r}")
        # The banner is printed once both listeners are bound; check the TCP one answers.
        with socket.create_connection((self.host, self.tcp_port), timeout=TIMEOUT):
            pass

    def log_tail(self, n=4000):
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except Exception:
            return ""

    def terminate(self, timeout=15) -> int | None:
        """SIGTERM and wait; returns the exit code, or None if it had to be killed."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The shared broker for the whole run (tests isolate themselves by unique names)."""
    srv = ServerProcess(tmp_path_factory.mktemp("server") / "data").start()
    yield srv
    code = srv.terminate()
    if code != 0:
        print(f"\ngame-server exited with {code} on SIGTERM; log tail:\n{srv.log_tail()}")


@pytest.fixture
def server_factory(tmp_path):
    """Starts private broker instances (for tests that stop or restart one)."""
    started = []

    def start(data_dir=None, heartbeat_ms=SERVER_HEARTBEAT_MS):
        srv = ServerProcess(Path(data_dir or tmp_path / unique("data")), heartbeat_ms=heartbeat_ms)
        started.append(srv.start())
        return srv

    yield start
    for srv in started:
        srv.kill()


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    return request.param


@pytest.fixture
def stomp_client(server, transport):
    """Factory: ``stomp_client(heartbeats=(0, 0), auto_decode=True, ...)`` -> connected StompClient.

    Over "ws", messages go as binary WebSocket messages unless ``ws_binary=False``.
    """
    clients = []

    def connect(
        heartbeats=(0, 0),
        auto_decode=True,
        headers=None,
        srv=None,
        with_connect_command=False,
        ws_binary=True,
    ):
        conn = make_stomp_connection(srv or server, transport, heartbeats, auto_decode, ws_binary)
        listener = Collector()
        conn.set_listener("collector", listener)
        client = StompClient(conn, listener, transport)
        clients.append(client)
        conn.connect(
            username=LOGIN,
            passcode=PASSCODE,
            wait=False,
            headers=headers or {},
            with_connect_command=with_connect_command,
        )
        wait_for(
            lambda: listener.connected or listener.errors or listener.disconnected,
            what=f"CONNECTED over {transport}",
        )
        assert listener.connected is not None, f"no CONNECTED over {transport}: {listener.errors}"
        return client

    yield connect
    for c in clients:
        c.close_quietly()


@pytest.fixture
def raw_client(server, transport):
    """Factory: ``raw_client(subprotocols=None, srv=server)`` -> RawConnection (not yet CONNECTed)."""
    conns = []

    def open_(subprotocols=None, srv=None):
        c = RawConnection(srv or server, transport, subprotocols)
        conns.append(c)
        return c

    yield open_
    for c in conns:
        c.close()


@pytest.fixture
def queue(request):
    """A destination name no other test uses."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name).strip("-")
    return f"/queue/{name}-{unique('q')}"


@pytest.fixture
def topic(request):
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name).strip("-")
    return f"/topic/{name}-{unique('t')}"


#: Debian's Chromium, which Playwright drives (no browser is downloaded).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Where the browser tests keep their screenshots (CI artifacts).
SHOTS = REPO / "target" / "browser-screenshots"


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


#: The terminal client (`cargo build -p game-client`).
CLIENT_BIN = Path(os.environ.get("GAME_CLIENT_BIN", REPO / "target" / "debug" / "game-client"))


class Tmux:
    """A tmux server of its own (never a user's sessions): each terminal client runs in
    an 80×24 session named after its player."""

    def __init__(self, config_dir: Path):
        self.socket = unique("gsl-browser-test")
        self.config_dir = config_dir

    def run(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10)
        return out.stdout

    def client(self, srv: ServerProcess, name: str, room: str):
        """Starts the terminal client as `name` in `room`; its key goes to the test's directory."""
        command = (
            f"GSL_CONFIG_DIR={self.config_dir / name} {CLIENT_BIN} --server http://{srv.host}:{srv.http_port} "
            f"--name {name} --room {room}; echo client-exited-$?; sleep 60"
        )
        self.run("new-session", "-d", "-s", name, "-x", "80", "-y", "24", command)

    def keys(self, session: str, *keys: str):
        """Sends tmux key names (`Left`, `Enter`) or text."""
        self.run("send-keys", "-t", session, *keys)

    def screen(self, session: str) -> str:
        return self.run("capture-pane", "-p", "-t", session)

    def wait_for(self, session: str, what: str, ok) -> str:
        """Waits up to 15 s until `ok(screen)`; answers the screen."""
        deadline = time.monotonic() + 15
        while True:
            screen = self.screen(session)
            if ok(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"waited 15 s for {what}; {session}'s screen:\n{screen}")
            time.sleep(0.1)


@pytest.fixture
def tmux(tmp_path):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: apt-get install tmux (.ci/run does)")
    if not CLIENT_BIN.exists():
        pytest.fail(f"{CLIENT_BIN} is missing: cargo build -p game-client")
    t = Tmux(tmp_path / "client-config")
    yield t
    t.run("kill-server")
