"""The browser's client (web/src/client.ts) goes down its ticket's list of broker nodes:
a ticket whose first node is down (nothing listens there) still plays, on the next one.
On a RabbitMQ cluster every ticket lists each node (docs/cluster.md); here the embedded
server's ticket is given a dead node in front of its own, on its way to the page.
"""

from __future__ import annotations

import socket

from interop_support import chat_both_ways, join_over_stomp, post, unique


def dead_ws_url() -> str:
    """A WebSocket URL on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"ws://127.0.0.1:{port}/ws"


def test_the_page_plays_on_the_next_node_when_its_first_is_down(server, browser):
    srv = server
    room = post(srv, "/rooms", {"name": unique("meadow")})["id"]
    ann = unique("ann").replace("-", "_")[:20]
    ticket, conn, heard = join_over_stomp(srv, room, ann)
    dead = dead_ws_url()
    rewritten = []

    def first_node_down(route):
        answer = route.fetch()
        body = answer.json()
        assert body["ws_urls"] == [body["ws_url"]], body
        body["ws_urls"] = [dead] + body["ws_urls"]
        body["ws_url"] = dead
        rewritten.append(body["player"])
        route.fulfill(response=answer, json=body)

    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.route("**/rooms/*/join", first_node_down)
    page.goto(f"http://{srv.host}:{srv.http_port}/")
    bob = unique("bob").replace("-", "_")[:20]
    page.fill("#name", bob)
    page.click(f'button[data-room="{room}"]')
    page.locator("#status", has_text="connected").wait_for(timeout=20_000)
    page.wait_for_selector(f'#players [data-player="{ann}"]')
    assert rewritten == [bob]
    assert sockets and sockets[0] == dead, sockets
    assert sockets[-1] == ticket["ws_url"], sockets
    # It plays there: its chat reaches the stomp.py player, and back.
    chat_both_ways(page, conn, ticket, heard, "hello from the second node", "hello back", 1)
    print(f"the page tried {sockets} and plays on the last")
    assert errors == [], errors
