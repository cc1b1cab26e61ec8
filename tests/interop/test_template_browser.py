"""A new game (`game-server new`) in a real browser: the page its own server ships at /,
on the bindings generated from its own Rust types and the framework's typed client. Two
players in two pages quick play into one room and each sees the other's moves and chat.
The server runs with a batch window (`--policy '*.batch_ms=500'`), so outputs made
close together (the two quick clicks') reach the pages as JSON arrays, which the client
reads.

``$NEW_GAME_BIN`` is the binary of a game written by `game-server new` (tests/run
builds one and sets it). The screenshot goes to target/browser-screenshots/.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import SHOTS, ServerProcess
from interop_support import unique

NEW_GAME_BIN = os.environ.get("NEW_GAME_BIN")

pytestmark = pytest.mark.skipif(
    not NEW_GAME_BIN, reason="set NEW_GAME_BIN to a game built from `game-server new` (tests/run does)"
)


def test_two_browser_players_play_a_new_game(tmp_path, browser):
    srv = ServerProcess(
        tmp_path / "data", binary=Path(NEW_GAME_BIN), extra_args=["--policy", "*.batch_ms=500"]
    ).start()
    try:
        errors = []
        pages = {}
        for who in ("ann", "bob"):
            name = unique(who).replace("-", "_")[:20]
            page = browser.new_page(viewport={"width": 700, "height": 700})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://{srv.host}:{srv.http_port}/")
            page.fill("#name", name)
            page.click("#join button")
            page.locator("#status", has_text=re.compile(r"^connected$")).wait_for()
            pages[name] = page
        (ann, ann_page), (bob, bob_page) = pages.items()
        room = ann_page.inner_text("#room")
        assert bob_page.inner_text("#room") == room, "quick play seats both in the open room"
        ann_page.locator("#log", has_text=f"{bob} joined").wait_for()
        # Each page hears the room once its subscription is in: its own chat comes back.
        for name, page in pages.items():
            page.fill("#text", f"{name} is here")
            page.press("#text", "Enter")
            page.locator("#log", has_text=f"{name}: {name} is here").wait_for()

        # Ann adds twice; both counters show it, and bob's log says who did it.
        ann_page.click("#plus")
        ann_page.click("#plus")
        bob_page.locator("#log", has_text=f"{ann} made it 2").wait_for()
        assert bob_page.inner_text("#count") == "2"
        # Bob takes one away and chats; ann sees both.
        bob_page.click("#minus")
        ann_page.locator("#log", has_text=f"{bob} made it 1").wait_for()
        assert ann_page.inner_text("#count") == "1"
        bob_page.fill("#text", "hello from the new game")
        bob_page.press("#text", "Enter")
        ann_page.locator("#log", has_text=f"{bob}: hello from the new game").wait_for()
        # The handler's refusal reaches the sender only (blank chat is not sent, so an
        # over-long one: the page caps it at 200 characters, the handler's own limit).
        ann_page.evaluate("document.getElementById('text').removeAttribute('maxlength')")
        ann_page.fill("#text", "x" * 201)
        ann_page.press("#text", "Enter")
        ann_page.locator("#log", has_text="refused: say 1 to 200 characters").wait_for()
        assert "refused" not in bob_page.inner_text("#log")

        SHOTS.mkdir(parents=True, exist_ok=True)
        ann_page.screenshot(path=str(SHOTS / "new-game.png"), full_page=True)
        assert errors == [], errors
    finally:
        srv.terminate()
