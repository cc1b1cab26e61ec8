"""The operator's inspector in a real browser: Debian's Chromium, driven by Playwright.

A player plays over STOMP with stomp.py; the inspector, opened with the operator secret,
lists the room, shows its state, its latest inputs with their outcomes and the live
stream, and its Kick takes the player out: the player's connection is closed and the
page shows the player gone. Screenshots go to target/browser-screenshots/.
"""

from __future__ import annotations

import json

import pytest

from conftest import SHOTS, ServerProcess
from interop_support import join_over_stomp, post, unique, wait_for

SECRET = "browser-test-operator-secret"


@pytest.fixture
def operated_server(tmp_path):
    srv = ServerProcess(tmp_path / "data", extra_args=["--operator-secret", SECRET]).start()
    yield srv
    srv.kill()


def test_the_inspector_shows_a_room_and_its_kick_takes_the_player_out(operated_server, browser):
    srv = operated_server
    room = post(srv, "/rooms", {"name": "inspected"})["id"]
    ann = unique("ann").replace("-", "_")
    ticket, conn, heard = join_over_stomp(srv, room, ann)
    conn.send(ticket["inbox"], json.dumps({"type": "look", "seq": 1}), content_type="application/json")
    conn.send(ticket["inbox"], json.dumps({"type": "fly", "seq": 2}), content_type="application/json")
    wait_for(lambda: any("unknown message type" in m.body for m in heard.messages), what="the refusal of fly")

    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"http://{srv.host}:{srv.http_port}/inspect")
    page.fill("#secret", SECRET)
    page.click("#login button")
    row = page.wait_for_selector(f'tr[data-room="{room}"]')
    assert "inspected" in row.inner_text()
    page.screenshot(path=str(SHOTS / "inspector-rooms.png"))

    page.click(f'a[href="#room={room}"]')
    page.wait_for_selector(f'#players tr[data-player="{ann}"]')
    # The state comes from the latest checkpoint: the MMO's world, with its items.
    page.locator("#state", has_text="items").wait_for()
    # The latest inputs, each with its outcome: look applied, fly rejected.
    page.locator("#inputs", has_text="unknown message type").wait_for()
    inputs = page.inner_text("#inputs")
    assert "look" in inputs and "applied" in inputs and "rejected" in inputs, inputs
    # The live stream: the room's outputs as they happen, once the broker holds the
    # page's subscription.
    page.locator("#stream", has_text="watching").wait_for()
    conn.send(ticket["inbox"], json.dumps({"type": "chat", "text": "hello inspector", "seq": 3}), content_type="application/json")
    page.locator("#stream", has_text="hello inspector").wait_for()
    page.screenshot(path=str(SHOTS / "inspector-room.png"), full_page=True)

    page.click(f'#players tr[data-player="{ann}"] button.kick')
    page.wait_for_selector(f'#players tr[data-player="{ann}"]', state="detached")
    wait_for(lambda: not conn.is_connected(), what="the kicked player's connection to close")
    assert errors == [], errors
