"""The three-node RabbitMQ cluster of `scripts/rabbitmq-node cluster start` (issue 19's
footing): one cluster of nodes that know each other, and a quorum queue that keeps every
receipted message through the kill -9 of the node that leads it, read with stomp.py
from another node.

``$GSL_TEST_CLUSTER`` is the cluster's --broker value (each node's URL, comma-separated);
tests/run starts the cluster and sets it. Killing and restarting a node goes through the
script, as an operator would.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import stomp

from interop_support import Collector, unique, wait_for

CLUSTER = os.environ.get("GSL_TEST_CLUSTER")
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rabbitmq-node"

pytestmark = pytest.mark.skipif(
    not CLUSTER, reason="set GSL_TEST_CLUSTER to `scripts/rabbitmq-node cluster start`'s last line (tests/run does)"
)


def nodes():
    """Each node of the --broker value: user, password, host and its ports."""
    found = []
    for url in CLUSTER.split(","):
        u = urllib.parse.urlsplit(url)
        q = dict(urllib.parse.parse_qsl(u.query))
        found.append({
            "user": u.username, "password": urllib.parse.unquote(u.password), "host": u.hostname,
            "stomp": int(q["stomp_port"]), "management": int(q["management_port"]),
            "quorum": q.get("quorum") == "true",
        })
    return found


def management(node, method, path, body=None):
    request = urllib.request.Request(
        f"http://{node['host']}:{node['management']}/api{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "content-type": "application/json",
            "authorization": "Basic " + base64.b64encode(f"{node['user']}:{node['password']}".encode()).decode(),
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
        return json.loads(text) if text else None


def connect(node):
    conn = stomp.Connection12([(node["host"], node["stomp"])], heartbeats=(0, 0), vhost="/")
    listener = Collector()
    conn.set_listener("collector", listener)
    conn.connect(node["user"], node["password"], wait=True)
    return conn, listener


def script(*args):
    subprocess.run([str(SCRIPT), "cluster", *args], check=True, capture_output=True, timeout=120)


def test_the_cluster_is_three_nodes_with_quorum_inboxes_in_its_url():
    found = nodes()
    assert len(found) == 3 and all(n["quorum"] for n in found), found
    for node in found:
        running = [n["name"] for n in management(node, "GET", "/nodes") if n["running"]]
        assert len(running) == 3, f"{node['management']}: {running}"


def test_a_quorum_queue_keeps_every_receipted_message_when_its_leader_is_killed():
    found = nodes()
    queue = unique("q-cluster")
    management(found[0], "PUT", f"/queues/%2F/{queue}",
               {"durable": True, "auto_delete": False, "arguments": {"x-queue-type": "quorum"}})
    leader = wait_for(lambda: management(found[0], "GET", f"/queues/%2F/{queue}").get("leader"),
                      timeout=20, what="the queue's leader")
    index = int(leader.split("@")[0].rsplit("-", 1)[1])  # gsl-I@localhost
    others = [n for i, n in enumerate(found, start=1) if i != index]

    # 100 messages through another node, each receipted by the cluster.
    conn, heard = connect(others[0])
    for i in range(100):
        conn.send(f"/amq/queue/{queue}", str(i), headers={"persistent": "true", "receipt": f"r{i}"})
    wait_for(lambda: len(heard.receipts) == 100, timeout=20, what="100 receipts")
    conn.disconnect()

    script("kill", str(index))
    try:
        killed = time.monotonic()
        # A surviving node serves the queue: a new leader, every message, in order, once.
        conn, heard = None, None
        deadline = time.monotonic() + 30
        while True:
            try:
                conn, heard = connect(others[1])
                conn.subscribe(f"/amq/queue/{queue}", id="s", ack="client-individual",
                               headers={"prefetch-count": "200"})
                wait_for(lambda: len(heard.messages) == 100, timeout=10, what="the 100 messages")
                break
            except (AssertionError, stomp.exception.StompException):
                if conn is not None and conn.is_connected():
                    conn.disconnect()
                if time.monotonic() > deadline:
                    raise
        resumed = time.monotonic() - killed
        now_led_by = management(others[0], "GET", f"/queues/%2F/{queue}").get("leader")
        assert now_led_by not in (None, leader), f"led by {now_led_by} after {leader} was killed"
        bodies = [m.body for m in heard.messages]
        assert bodies == [str(i) for i in range(100)], bodies
        for m in heard.messages:
            conn.ack(m.headers["message-id"], m.headers["subscription"])
        conn.disconnect()
        print(f"the queue served again {resumed:.2f} s after its leader was killed")
    finally:
        script("restart", str(index))
    # The restarted node is back in the cluster, and the queue has it online again.
    wait_for(lambda: all(n["running"] for n in management(found[0], "GET", "/nodes")), timeout=30,
             what="three running nodes")
    wait_for(lambda: len(management(found[0], "GET", f"/queues/%2F/{queue}").get("online", [])) == 3,
             timeout=30, what="the queue's three members online")
    management(found[0], "DELETE", f"/queues/%2F/{queue}")
