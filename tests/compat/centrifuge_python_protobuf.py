"""Compatibility test of the Protobuf encoding with the official Python SDK (PyPI
`centrifuge-python`, `use_protobuf=True`): connect, subscribe, publish, rpc, presence, history and
recovery after a dropped connection, beside a JSON client of the same SDK in the same channel.

Usage: python centrifuge_python_protobuf.py HOST:PORT
  SWITCHBOARD_API_KEY  key for the server API (sent as X-API-Key)

In Protobuf, payloads are bytes: JSON text stays JSON (the JSON client sees the value, Protobuf
clients get the text back byte for byte); publication data that is not JSON is a binary
publication (bytes for Protobuf clients, a base64 string for JSON ones); rpc data may be any bytes
too (`echo` returns them as they are). The steps, waits and the network relay are those of
centrifuge_python.py.
"""

import asyncio
import json
import re

from centrifuge import Client, ClientState

import centrifuge_python as common
from centrifuge_python import (
    WAIT,
    ClientLog,
    Relay,
    SubscriptionLog,
    api,
    check,
    equal,
    fails_with_code,
    step,
    until,
    within,
)


def encode(value):
    return json.dumps(value, separators=(",", ":")).encode()


async def main(address):
    host, port = address.rsplit(":", 1)
    relay = Relay(host, int(port))
    relay_port = await relay.start()

    def new_client(use_protobuf):
        log = ClientLog()
        client = Client(
            f"ws://127.0.0.1:{relay_port}/connection/websocket",
            events=log,
            use_protobuf=use_protobuf,
            min_reconnect_delay=0.05,
            max_reconnect_delay=0.3,
            timeout=WAIT,
            proxy=None,
        )
        return client, log

    async def connected(what, client, log, count=1):
        await until(
            f"{what} to be connected (#{count})",
            lambda: len(log.connected) >= count and client.state == ClientState.CONNECTED,
        )
        return log.connected[count - 1]

    pb, pb_log = new_client(use_protobuf=True)
    js, js_log = new_client(use_protobuf=False)
    pb_chat_log, js_chat_log = SubscriptionLog(), SubscriptionLog()
    pb_chat = pb.new_subscription("chat", events=pb_chat_log, join_leave=True, recoverable=True, positioned=True)
    js_chat = js.new_subscription("chat", events=js_chat_log)

    async def connect_and_subscribe():
        await within("Protobuf connect()", pb.connect())
        ctx = await connected("the Protobuf client", pb, pb_log)
        check(re.fullmatch(r"[0-9a-f-]{36}", ctx.client), f"client id is a UUID: {ctx.client!r}")
        await within("JSON connect()", js.connect())
        await connected("the JSON client", js, js_log)
        await within("Protobuf subscribe()", pb_chat.subscribe())
        await until("the Protobuf subscription", lambda: pb_chat_log.subscribed)
        sub = pb_chat_log.subscribed[0]
        equal(sub.recoverable, True, "subscribed.recoverable")
        equal(sub.positioned, True, "subscribed.positioned")
        await within("JSON subscribe()", js_chat.subscribe())
        await until("the JSON subscription", lambda: js_chat_log.subscribed)

    await step("use_protobuf=True connects and subscribes", connect_and_subscribe)

    async def both_ways():
        await within("Protobuf publish()", pb_chat.publish(encode({"text": "from protobuf"})))
        await until("the JSON client to get it", lambda: js_chat_log.publications)
        equal(js_chat_log.publications[0].data, {"text": "from protobuf"}, "JSON client's data")
        await until("the Protobuf client to get it", lambda: pb_chat_log.publications)
        own = pb_chat_log.publications[0]
        check(isinstance(own.data, bytes), f"Protobuf payloads are bytes: {own.data!r}")
        equal(json.loads(own.data), {"text": "from protobuf"}, "Protobuf client's data")
        await within("JSON publish()", js_chat.publish({"text": "from json"}))
        await until("the Protobuf client to get the JSON one", lambda: len(pb_chat_log.publications) >= 2)
        # Byte for byte the JSON text the JSON client sent (the SDK's `json.dumps`).
        sent = json.dumps({"text": "from json"}).encode()
        equal(pb_chat_log.publications[1].data, sent, "the JSON text, byte for byte")
        await api(address, "publish", {"channel": "chat", "data": {"text": "from the api"}})
        await until("the API publication", lambda: len(pb_chat_log.publications) >= 3)
        equal(json.loads(pb_chat_log.publications[2].data), {"text": "from the api"}, "API data")

    await step("JSON and Protobuf clients see each other's publications", both_ways)

    async def binary_data():
        await within("binary publish()", pb_chat.publish(b"\x00\xff\x01"))
        await until("the binary publication", lambda: len(pb_chat_log.publications) >= 4)
        equal(pb_chat_log.publications[3].data, b"\x00\xff\x01", "the bytes, byte for byte")
        await until("the JSON client to get it", lambda: len(js_chat_log.publications) >= 4)
        equal(js_chat_log.publications[3].data, "AP8B", "a base64 string for a JSON client")
        # RPC data may be any bytes: `echo` returns them byte for byte.
        echoed = await within("a binary rpc", pb.rpc("echo", b"\xff\x00"))
        equal(echoed.data, b"\xff\x00", "the bytes echoed, byte for byte")
        reply = await within("a JSON rpc after it", pb.rpc("echo", encode({"still": "here"})))
        equal(json.loads(reply.data), {"still": "here"}, "echoed data")
        equal(pb.state, ClientState.CONNECTED, "client state")

    await step("binary data: byte for byte to Protobuf clients, a base64 string to JSON ones", binary_data)

    async def queries():
        reply = await within("rpc echo", pb.rpc("echo", encode([1, 2, 3])))
        equal(json.loads(reply.data), [1, 2, 3], "echoed data")
        await fails_with_code("rpc no-such-method", pb.rpc("no-such-method", encode({})), 108)
        presence = await within("presence()", pb_chat.presence())
        equal(len(presence.clients), 2, "clients present")
        stats = await within("presence_stats()", pb_chat.presence_stats())
        equal((stats.num_clients, stats.num_users), (2, 1), "presence stats")
        history = await within("history()", pb_chat.history(limit=10))
        equal([p.offset for p in history.publications], [1, 2, 3, 4], "history offsets")
        equal(history.publications[3].data, b"\x00\xff\x01", "binary data in history")
        equal(
            [json.loads(p.data)["text"] for p in history.publications[:3]],
            ["from protobuf", "from json", "from the api"],
            "history data",
        )

    await step("rpc, presence, presence_stats and history", queries)

    async def recovery_after_drop():
        connects, subscribes = len(pb_log.connected), len(pb_chat_log.subscribed)
        relay.open = False
        relay.drop()
        await until("the Protobuf client to notice the drop", lambda: pb.state == ClientState.CONNECTING)
        for n in (1, 2):
            await api(address, "publish", {"channel": "chat", "data": {"text": f"missed {n}"}})
        await api(address, "publish", {"channel": "chat", "b64data": "CQAJ"})
        await asyncio.sleep(0.15)
        relay.open = True
        ctx = await until("the resubscription", lambda: pb_chat_log.subscribed[subscribes:])
        await connected("the Protobuf client again", pb, pb_log, connects + 1)
        equal(ctx[0].recovered, True, "subscribed.recovered")
        await until("the missed publications", lambda: len(pb_chat_log.publications) >= 7)
        equal(pb_chat_log.offsets(), [1, 2, 3, 4, 5, 6, 7], "offsets received")
        equal(
            [json.loads(p.data)["text"] for p in pb_chat_log.publications[4:6]],
            ["missed 1", "missed 2"],
            "recovered data",
        )
        equal(pb_chat_log.publications[6].data, b"\x09\x00\x09", "recovered bytes")

    await step("recovery after a network drop: missed publications arrive after the SDK reconnects", recovery_after_drop)

    await within("Protobuf disconnect()", pb.disconnect())
    await within("JSON disconnect()", js.disconnect())
    await relay.close()


if __name__ == "__main__":
    common.run(main, "centrifuge_python_protobuf.py", "all centrifuge-python Protobuf checks passed")
