"""The MMO in a real browser (Debian's Chromium, driven by Playwright): the page the
lobby serves at /, on the typed client (web/src/client.ts) and @stomp/stompjs. A player
in the browser and one over stomp.py share a room: each sees the other move and chat.
Two browser players and one in the terminal client (in tmux) share another, with the
operator's inspector open on it. Screenshots go to target/browser-screenshots/.
"""

from __future__ import annotations

import json
import time


from conftest import SHOTS, ServerProcess
from interop_support import chat_both_ways, join_over_stomp, post, unique, wait_for

SECRET = "mmo-browser-test-operator-secret"


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
    chat_both_ways(page, conn, ticket, heard, "hello from the browser", "hello from stomp.py", 1)
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


def map_column(screen: str, glyph: str) -> int | None:
    """The column of `glyph` on the test meadow's one row of floor (`#O…#`), in the
    browser's map or the terminal's; None if it is not there."""
    line = next(line for line in screen.splitlines() if "#O" in line)
    row = line[line.index("#O"):][: len(MEADOW[1])]
    return row.index(glyph) if glyph in row else None


#: One row of floor: a portal to the caves at column 1, then spawn points at 2, 5, 8 for
#: the first, second and third player.
MEADOW = ["############", "#OS..S..S..#", "############"]


def test_two_browser_players_and_a_terminal_player_share_a_room(tmp_path, browser, tmux):
    """Moves and chat cross between the browsers and the terminal client both ways; the
    inspector lists the room and shows its state, and its kick takes a browser player
    off every screen; the other browser player walks through the portal to the caves."""
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "meadow.txt").write_text("\n".join(MEADOW) + "\n")
    (maps / "caves.txt").write_text("#######\n#S..O.#\n#######\n")
    srv = ServerProcess(
        tmp_path / "data", extra_args=["--operator-secret", SECRET], env={"GSL_MAPS": str(maps)}
    ).start()
    try:
        base = f"http://{srv.host}:{srv.http_port}"
        room = post(srv, "/rooms", {"name": "meadow"})["id"]
        errors = []
        pages = {}
        for name in ("ann", "bob"):  # spawned at columns 2 and 5
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/")
            page.fill("#name", name)
            page.click(f'button[data-room="{room}"]')
            page.wait_for_selector(f'#players [data-player="{name}"]')
            pages[name] = page
        ann, bob = pages["ann"], pages["bob"]
        tmux.client(srv, "cyd", room)  # spawned at column 8
        tmux.wait_for("cyd", "cyd in the room with bob", lambda s: " online | L1 HP " in s and "b bob " in s)
        for page in (ann, bob):
            page.wait_for_selector('#players [data-player="cyd"]')

        # Moves: bob's arrow key on cyd's terminal; cyd's in both browsers.
        assert map_column(tmux.screen("cyd"), "b") == 5
        bob.keyboard.press("ArrowRight")
        tmux.wait_for("cyd", "bob's move", lambda s: map_column(s, "b") == 6)
        tmux.keys("cyd", "Left")
        for page in (ann, bob):
            wait_for(lambda: map_column(page.inner_text("#map"), "c") == 7, what="cyd's move in a browser")
        # Chat: bob's on cyd's terminal, cyd's in ann's browser.
        bob.keyboard.press("Enter")
        bob.keyboard.type("hello terminal")
        bob.keyboard.press("Enter")
        tmux.wait_for("cyd", "bob's chat", lambda s: "bob: hello terminal" in s)
        tmux.keys("cyd", "Enter")
        tmux.keys("cyd", "-l", "hello browsers")
        tmux.keys("cyd", "Enter")
        ann.locator("#log", has_text="cyd: hello browsers").wait_for()

        # The inspector lists the room and shows its state; its kick takes bob out: off
        # cyd's terminal and ann's page, and bob's page is back in the lobby, saying why.
        inspector = browser.new_page(viewport={"width": 1400, "height": 1000})
        inspector.on("pageerror", lambda e: errors.append(str(e)))
        inspector.goto(base + "/inspect")
        inspector.fill("#secret", SECRET)
        inspector.click("#login button")
        assert "meadow" in inspector.wait_for_selector(f'tr[data-room="{room}"]').inner_text()
        inspector.click(f'a[href="#room={room}"]')
        for name in ("ann", "bob", "cyd"):
            inspector.wait_for_selector(f'#players tr[data-player="{name}"]')
        inspector.locator("#state", has_text='"cyd"').wait_for()
        SHOTS.mkdir(parents=True, exist_ok=True)
        inspector.screenshot(path=str(SHOTS / "inspector-three-players.png"), full_page=True)
        inspector.click('#players tr[data-player="bob"] button.kick')
        tmux.wait_for("cyd", "bob gone from cyd's terminal", lambda s: "b bob " not in s and map_column(s, "b") is None)
        ann.wait_for_selector('#players [data-player="bob"]', state="detached")
        bob.locator("#error", has_text="refused this room's ticket").wait_for()
        assert bob.is_visible("#lobby") and not bob.is_visible("#game")
        bob.screenshot(path=str(SHOTS / "mmo-kicked.png"), full_page=True)

        # A zone change from the browser: ann steps left into the portal.
        ann.keyboard.press("ArrowLeft")
        ann.locator("#zone", has_text="caves").wait_for()
        ann.locator("#log", has_text="you are in the caves").wait_for()
        screen = tmux.wait_for("cyd", "ann gone to the caves", lambda s: "ann left for the caves" in s)
        assert map_column(screen, "a") is None, screen
        ann.keyboard.press("ArrowRight")
        wait_for(lambda: "@" in ann.inner_text("#map"), what="ann on the caves' map")
        ann.screenshot(path=str(SHOTS / "mmo-caves.png"), full_page=True)
        (SHOTS / "tui-cyd.txt").write_text(tmux.screen("cyd"))
        assert errors == [], errors
    finally:
        srv.terminate()


def test_a_recorded_match_plays_back_in_the_browser(server, browser):
    """A match played over stomp.py and ended is in the page's list of recorded matches;
    Watch plays it back on the map at 16×: the chat and the moves as the player saw
    them, a time bar that reaches the end, and going back to the start empties the log."""
    import urllib.request

    srv = server
    base = f"http://{srv.host}:{srv.http_port}"
    made = post(srv, "/rooms", {"name": unique("replayed")})
    room, owner = made["id"], made["owner_token"]
    dan = unique("dan").replace("-", "_")[:20]
    ticket, conn, heard = join_over_stomp(srv, room, dan)
    for seq, body in enumerate([{"type": "move", "dx": 1, "dy": 0}, {"type": "chat", "text": "hello from the record"}], 1):
        conn.send(ticket["inbox"], json.dumps({**body, "seq": seq}), content_type="application/json")
    wait_for(lambda: any(json.loads(m.body).get("text") == "hello from the record" for m in heard.messages),
             what="dan's chat, applied")
    conn.disconnect()
    end = urllib.request.Request(f"{base}/rooms/{room}", headers={"Authorization": f"Bearer {owner}"}, method="DELETE")
    urllib.request.urlopen(end, timeout=10).read()

    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/")
    page.click(f'button[data-match="{room}"]')
    page.select_option("#replay-speed", "16")
    page.locator("#log", has_text=f"{dan}: hello from the record").wait_for()
    page.locator("#replay-time", has_text="the end").wait_for()
    assert page.locator(f'#players [data-player="{dan}"]').count() == 1
    assert "@" in page.inner_text("#map"), "dan's own view: he is the @"
    assert f"as {dan}" in page.inner_text("#status")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "replay.png"), full_page=True)
    # Paused, back to the start: the view starts over, before the chat.
    page.click("#replay-pause")
    page.eval_on_selector("#replay-bar", "b => { b.value = '0'; b.dispatchEvent(new Event('input')); }")
    page.locator("#replay-time", has_text="0:00 /").wait_for()
    assert "hello from the record" not in page.inner_text("#log")
    page.click("#leave")
    page.wait_for_selector(f'button[data-match="{room}"]')
    assert errors == [], errors
