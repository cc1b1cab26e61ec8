"""The MMO in a real browser (Debian's Chromium, driven by Playwright): the page the
lobby serves at /, on the typed client (web/src/client.ts) and @stomp/stompjs. A player
in the browser and one over stomp.py share a room: each sees the other move and chat.
Screenshots go to target/browser-screenshots/.
"""

from __future__ import annotations

import json
import time


from conftest import SHOTS
from interop_support import join_over_stomp, post, unique, wait_for


def test_a_browser_player_and_a_stomp_player_see_each_other(server, browser):
    srv = server
    base = f"http://{srv.host}:{srv.http_port}"
    room = post(srv, "/rooms", {"name": unique("meadow")})["id"]
    ann = unique("ann").replace("-", "_")[:20]
    ticket, conn, heard = join_over_stomp(srv, room, ann)

    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    started = time.monotonic()
    page.goto(base + "/")
    bob = unique("bob").replace("-", "_")[:20]
    page.fill("#name", bob)
    page.click(f'button[data-room="{room}"]')
    page.wait_for_selector(f'#players [data-player="{ann}"]')
    page.wait_for_selector(f'#players [data-player="{bob}"]')
    # Moves with the arrow keys (or WASD): the stomp.py player sees them.
    for key in ["ArrowRight", "d", "ArrowDown", "s"]:
        page.keyboard.press(key)
    wait_for(
        lambda: any(json.loads(m.body).get("type") in ("moved", "blocked", "hit") and json.loads(m.body).get("input_from") == bob
                    for m in heard.messages),
        what="the browser player's move, heard over stomp.py",
    )
    first_move = time.monotonic() - started
    # Chat both ways.
    page.keyboard.press("Enter")
    page.keyboard.type("hello from the browser")
    page.keyboard.press("Enter")
    wait_for(lambda: any("hello from the browser" in m.body for m in heard.messages), what="the browser's chat")
    conn.send(ticket["inbox"], json.dumps({"type": "chat", "text": "hello from stomp.py", "seq": 1}), content_type="application/json")
    page.locator("#log", has_text="hello from stomp.py").wait_for()
    # The stomp.py player moves: the browser's map shows it where the room says.
    conn.send(ticket["inbox"], json.dumps({"type": "move", "dx": 1, "dy": 0, "seq": 2}), content_type="application/json")
    wait_for(lambda: any(json.loads(m.body).get("input_from") == ann and json.loads(m.body).get("input_seq") == 2 for m in heard.messages),
             what="ann's move applied")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "mmo.png"), full_page=True)
    print(f"from the page's load to the first move heard: {first_move:.2f} s")
    assert errors == [], errors


def test_the_page_carries_on_after_a_server_restart(server_factory, browser):
    """The server restarts under the page: it reconnects with its ticket by itself, asks
    for the world again, and its chat goes round the restarted room."""
    srv = server_factory()
    room = post(srv, "/rooms", {"name": unique("meadow")})["id"]
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"http://{srv.host}:{srv.http_port}/")
    cyd = unique("cyd").replace("-", "_")[:20]
    page.fill("#name", cyd)
    page.click(f'button[data-room="{room}"]')
    page.wait_for_selector(f'#players [data-player="{cyd}"]')
    page.locator("#status", has_text="connected").wait_for()

    srv.restart()
    page.locator("#status", has_text="reconnecting").wait_for()
    page.locator("#status", has_text="connected").wait_for(timeout=30_000)
    page.keyboard.press("Enter")
    page.keyboard.type("after the restart")
    page.keyboard.press("Enter")
    page.locator("#log", has_text=f"{cyd}: after the restart").wait_for(timeout=30_000)
    assert errors == [], errors
