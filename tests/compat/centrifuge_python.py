"""Compatibility test: drives a running Switchboard with the official Python SDK (PyPI
`centrifuge-python`, pinned in requirements.txt), through its public API only.

Usage: python centrifuge_python.py HOST:PORT
  SWITCHBOARD_API_KEY       key for the server API (sent as X-API-Key), if the server has one
  SWITCHBOARD_TOKEN_SECRET  HS256 secret of connection tokens (the steps that act on a user
                            through the server API need a client with a user)

The server must accept anonymous clients too and should ping every second with a short pong
timeout, so that pongs are exercised. The SDK reaches the server through a small TCP relay that
the test controls, to cut the network (drop every connection, refuse new ones) without touching
the SDK's internals. Every wait is bounded; the first failed check prints what was expected and
exits 1. Progress goes to stdout, one line per passed step.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import sys
import time
import traceback
import urllib.error
import urllib.request

from centrifuge import (
    Client,
    ClientEventHandler,
    ClientState,
    ReplyError,
    StreamPosition,
    SubscriptionEventHandler,
    SubscriptionState,
)

WAIT = 5.0
"""Longest wait for any single expected event, in seconds."""
TOTAL = 50.0
"""The whole script must finish in this time."""

API_KEY = os.environ.get("SWITCHBOARD_API_KEY", "")
TOKEN_SECRET = os.environ.get("SWITCHBOARD_TOKEN_SECRET", "")

current_step = "start"


class CheckFailed(Exception):
    """A check of the test failed."""


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def equal(actual, expected, what):
    check(actual == expected, f"{what}: expected {expected!r}, got {actual!r}")


async def step(name, body):
    global current_step
    current_step = name
    started = time.monotonic()
    await body()
    print(f"ok - {name} ({(time.monotonic() - started) * 1000:.0f} ms)", flush=True)


async def until(what, condition, timeout=WAIT):
    """Polls `condition` until it returns a truthy value, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def eventually(what, probe, timeout=WAIT):
    """Like `until`, for an async probe returning (ok, seen)."""
    deadline = time.monotonic() + timeout
    while True:
        ok, seen = await probe()
        if ok:
            return seen
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout} s waiting for {what}; last seen {seen!r}")
        await asyncio.sleep(0.02)


async def within(what, awaitable, timeout=WAIT):
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise CheckFailed(f"timed out after {timeout} s waiting for {what}") from None


async def fails_with_code(what, awaitable, code):
    try:
        result = await within(what, awaitable)
    except ReplyError as error:
        equal(error.code, code, f"{what}: error code")
        return
    raise CheckFailed(f"{what}: expected error {code}, got success {result!r}")


def hs256(claims, secret):
    """Signs a HS256 JWT."""

    def encode(raw):
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    unsigned = f"{header}.{encode(json.dumps(claims).encode())}"
    signature = hmac.new(secret.encode(), unsigned.encode(), hashlib.sha256).digest()
    return f"{unsigned}.{encode(signature)}"


def api_raw(address, method, body, key):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["X-API-Key"] = key
    request = urllib.request.Request(
        f"http://{address}/api/{method}",
        data=json.dumps(body).encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def api(address, method, body, key=None):
    """Calls the server API; returns `result`, failing on any HTTP or API error."""
    status, text = await asyncio.to_thread(api_raw, address, method, body, API_KEY if key is None else key)
    equal(status, 200, f"/api/{method} HTTP status ({text})")
    reply = json.loads(text)
    check("error" not in reply, f"/api/{method} failed: {text}")
    return reply["result"]


class Relay:
    """A TCP relay between the SDK and the server: the test's switch for the network.

    `drop()` cuts every relayed connection (no close frame, as when a network fails), and while
    `open` is false new connections are closed as soon as they arrive, so the SDK's reconnect
    attempts fail until the network is back.
    """

    def __init__(self, upstream_host, upstream_port):
        self.upstream = (upstream_host, upstream_port)
        self.open = True
        self.refused = 0
        self.writers = set()
        self.server = None

    async def start(self):
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    def drop(self):
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def _relay(self, client_reader, client_writer):
        if not self.open:
            self.refused += 1
            client_writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()
            return
        self.writers.update((client_writer, server_writer))

        async def pipe(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.transport.abort()

        try:
            await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))
        except asyncio.CancelledError:
            pass  # the event loop is ending: nothing left to relay
        self.writers.discard(client_writer)
        self.writers.discard(server_writer)

    async def close(self):
        self.server.close()
        self.drop()
        await asyncio.sleep(0.05)  # let the relaying tasks see their sockets end


class ClientLog(ClientEventHandler):
    """Records every client event."""

    def __init__(self):
        self.connecting, self.connected, self.disconnected, self.errors = [], [], [], []
        self.subscribed, self.publications = [], []

    async def on_connecting(self, ctx):
        self.connecting.append(ctx)

    async def on_connected(self, ctx):
        self.connected.append(ctx)

    async def on_disconnected(self, ctx):
        self.disconnected.append(ctx)

    async def on_error(self, ctx):
        self.errors.append(ctx)

    async def on_subscribed(self, ctx):
        self.subscribed.append(ctx)

    async def on_publication(self, ctx):
        self.publications.append(ctx)


class SubscriptionLog(SubscriptionEventHandler):
    """Records every subscription event."""

    def __init__(self):
        self.subscribing, self.subscribed, self.unsubscribed = [], [], []
        self.publications, self.joins, self.leaves, self.errors = [], [], [], []

    async def on_subscribing(self, ctx):
        self.subscribing.append(ctx)

    async def on_subscribed(self, ctx):
        self.subscribed.append(ctx)

    async def on_unsubscribed(self, ctx):
        self.unsubscribed.append(ctx)

    async def on_publication(self, ctx):
        self.publications.append(ctx.pub)

    async def on_join(self, ctx):
        self.joins.append(ctx.info)

    async def on_leave(self, ctx):
        self.leaves.append(ctx.info)

    async def on_error(self, ctx):
        self.errors.append(ctx)

    def offsets(self):
        return [p.offset for p in self.publications]


async def main(address):
    host, port = address.rsplit(":", 1)
    relay = Relay(host, int(port))
    relay_port = await relay.start()
    ws_url = f"ws://127.0.0.1:{relay_port}/connection/websocket"

    def new_client(**options):
        log = ClientLog()
        client = Client(
            ws_url,
            events=log,
            name="switchboard-compat",
            min_reconnect_delay=0.05,
            max_reconnect_delay=0.3,
            timeout=WAIT,
            proxy=None,
            **options,
        )
        return client, log

    async def connected(what, client, log, count=1):
        await until(
            f"{what} to be connected (connected event #{count})",
            lambda: len(log.connected) >= count and client.state == ClientState.CONNECTED,
        )
        return log.connected[count - 1]

    alice, alice_log = new_client()
    state = {}

    async def connect_anonymously():
        await within("connect()", alice.connect())
        ctx = await connected("client A", alice, alice_log)
        check(re.fullmatch(r"[0-9a-f-]{36}", ctx.client), f"client id is a UUID: {ctx.client!r}")
        state["alice"] = ctx.client

    await step("connect anonymously; the connected event carries a client id", connect_anonymously)

    chat_log = SubscriptionLog()
    chat = alice.new_subscription("chat", events=chat_log, join_leave=True, recoverable=True, positioned=True)

    async def subscribe():
        await within("subscribe()", chat.subscribe())
        await within("sub.ready()", chat.ready())
        ctx = chat_log.subscribed[0]
        equal(ctx.recoverable, True, "subscribed.recoverable")
        equal(ctx.positioned, True, "subscribed.positioned")
        equal(ctx.was_recovering, False, "subscribed.was_recovering")
        equal(ctx.recovered, False, "subscribed.recovered")
        check(ctx.stream_position is not None, "subscribed.stream_position is set")
        equal(ctx.stream_position.offset, 0, "offset of a new stream")
        check(ctx.stream_position.epoch, "the stream has an epoch")
        state["epoch"] = ctx.stream_position.epoch

    await step("subscribe: the subscribed context reports a recoverable, positioned stream", subscribe)
    epoch = state["epoch"]
    alice_id = state["alice"]

    async def api_publication():
        if API_KEY:
            status, _ = await asyncio.to_thread(api_raw, address, "info", {}, "")
            equal(status, 401, "HTTP status of /api/info without a key")
        result = await api(address, "publish", {"channel": "chat", "data": {"text": "from the API"}})
        equal(result, {"offset": 1, "epoch": epoch}, "publish API result")
        pub = await until("the API publication", lambda: chat_log.publications[:1])
        equal(pub[0].data, {"text": "from the API"}, "publication data")
        equal(pub[0].offset, 1, "publication offset")
        equal(pub[0].info, None, "publisher info of an API publication")

    await step("publication sent through POST /api/publish reaches the subscriber", api_publication)

    async def client_publication():
        await within("sub.publish()", chat.publish({"text": "from the client"}))
        await until("the client publication", lambda: len(chat_log.publications) >= 2)
        pub = chat_log.publications[1]
        equal(pub.data, {"text": "from the client"}, "publication data")
        equal(pub.offset, 2, "publication offset")
        check(pub.info is not None, "a client publication carries info")
        equal(pub.info.client, alice_id, "publisher client id")
        equal(pub.info.user, "", "publisher user")
        result = await api(
            address, "publish", {"channel": "chat", "data": {"text": "tagged"}, "tags": {"kind": "test"}}
        )
        equal(result["offset"], 3, "offset of the tagged publication")
        await until("the tagged publication", lambda: len(chat_log.publications) >= 3)
        equal(chat_log.publications[2].tags, {"kind": "test"}, "publication tags")

    await step("publish from the client and receive it with publisher info; tags", client_publication)

    async def rpc():
        data = {"hello": "world", "list": [1, 2, 3]}
        equal((await within("rpc echo", alice.rpc("echo", data))).data, data, "echoed data")
        equal((await within("rpc echo 42", alice.rpc("echo", 42))).data, 42, "echoed number")
        await fails_with_code("rpc no-such-method", alice.rpc("no-such-method", {}), 108)

    await step("rpc('echo') returns its data; an unknown method gives error 108 (not available), as Centrifugo without an RPC proxy", rpc)

    async def presence():
        result = await within("presence()", chat.presence())
        equal(list(result.clients), [alice_id], "presence client ids")
        equal(result.clients[alice_id].user, "", "presence user")
        stats = await within("presence_stats()", chat.presence_stats())
        equal((stats.num_clients, stats.num_users), (1, 1), "presence stats")

    await step("presence() and presence_stats() show the client", presence)

    async def history():
        everything = await within("history limit 10", chat.history(limit=10))
        equal(everything.epoch, epoch, "history epoch")
        equal(everything.offset, 3, "history top offset")
        equal([p.offset for p in everything.publications], [1, 2, 3], "history offsets")
        equal(everything.publications[1].info.client, alice_id, "history publisher info")
        top = await within("history without limit", chat.history())
        equal((top.publications, top.offset, top.epoch), ([], 3, epoch), "position-only history")
        since = await within("history since 1", chat.history(limit=10, since=StreamPosition(1, epoch)))
        equal([p.offset for p in since.publications], [2, 3], "offsets since 1")
        newest = await within("history reverse", chat.history(limit=2, reverse=True))
        equal([p.offset for p in newest.publications], [3, 2], "newest first")
        await fails_with_code(
            "history since another epoch", chat.history(limit=10, since=StreamPosition(1, "gone")), 112
        )

    await step("history() returns publications with offsets and the epoch", history)

    async def join_leave():
        bob, bob_log = new_client()
        await within("client B connect()", bob.connect())
        bob_id = (await connected("client B", bob, bob_log)).client
        check(bob_id != alice_id, "each connection has its own client id")
        bob_sub_log = SubscriptionLog()
        bob_sub = bob.new_subscription("chat", events=bob_sub_log, join_leave=True)
        await within("client B subscribe()", bob_sub.subscribe())
        await within("client B subscribed", bob_sub.ready())
        join = await until("A's join event for B", lambda: [j for j in chat_log.joins if j.client == bob_id])
        equal(join[0].user, "", "joined user")
        stats = await within("presence_stats with two", chat.presence_stats())
        equal((stats.num_clients, stats.num_users), (2, 1), "presence stats with two anonymous clients")
        await within("client B disconnect()", bob.disconnect())
        await until("A's leave event for B", lambda: [x for x in chat_log.leaves if x.client == bob_id])

        async def one_left():
            stats = await within("presence_stats", chat.presence_stats())
            return stats.num_clients == 1, stats

        await eventually("presence back to one client", one_left)

    await step("join and leave events from a second client", join_leave)

    async def pings():
        before = len(alice_log.connecting) + len(alice_log.disconnected)
        await asyncio.sleep(3)
        equal(len(alice_log.connecting) + len(alice_log.disconnected), before, "reconnects while idle")
        equal(alice.state, ClientState.CONNECTED, "client state")

    await step("the connection survives server pings (the SDK answers with pongs)", pings)

    async def recovery_after_drop():
        connects, subscribes = len(alice_log.connected), len(chat_log.subscribed)
        relay.open = False
        relay.drop()
        await until("client A to notice the drop", lambda: chat.state == SubscriptionState.SUBSCRIBING)
        missed = [await api(address, "publish", {"channel": "chat", "data": {"text": f"missed {n}"}}) for n in (1, 2)]
        equal([m["offset"] for m in missed], [4, 5], "offsets of the missed publications")
        await asyncio.sleep(0.15)
        relay.open = True
        ctx = await until("the resubscription", lambda: chat_log.subscribed[subscribes:])
        await connected("client A again", alice, alice_log, connects + 1)
        equal(ctx[0].was_recovering, True, "subscribed.was_recovering")
        equal(ctx[0].recovered, True, "subscribed.recovered")
        equal(ctx[0].stream_position.epoch, epoch, "epoch after recovery")
        await until("the missed publications", lambda: len(chat_log.publications) >= 5)
        await api(address, "publish", {"channel": "chat", "data": {"text": "live again"}})
        await until("the live publication", lambda: len(chat_log.publications) >= 6)
        await asyncio.sleep(0.1)
        equal(chat_log.offsets(), [1, 2, 3, 4, 5, 6], "offsets received")
        equal([p.data["text"] for p in chat_log.publications[3:5]], ["missed 1", "missed 2"], "recovered data")

    await step("recovery after a network drop: missed publications arrive after the SDK reconnects", recovery_after_drop)

    async def recovery_after_api_disconnect():
        check(TOKEN_SECRET, "SWITCHBOARD_TOKEN_SECRET must be set: the API disconnects users, so this client needs a token")
        info = {"name": "Carol"}
        carol, carol_log = new_client(token=hs256({"sub": "carol", "info": info}, TOKEN_SECRET))
        await within("client C connect()", carol.connect())
        carol_id = (await connected("client C", carol, carol_log)).client
        news_log = SubscriptionLog()
        news = carol.new_subscription("news", events=news_log)
        await within("client C subscribe()", news.subscribe())
        await within("client C subscribed", news.ready())
        presence = await within("presence of news", news.presence())
        equal(presence.clients[carol_id].user, "carol", "presence user")
        equal(presence.clients[carol_id].conn_info, info, "token info shows as conn_info")
        await api(address, "publish", {"channel": "news", "data": {"n": 1}})
        await until("the first news publication", lambda: news_log.publications)

        connects, subscribes = len(carol_log.connected), len(news_log.subscribed)
        relay.open = False
        await api(address, "disconnect", {"user": "carol", "disconnect": {"code": 3011, "reason": "force reconnect"}})
        connecting = await until("client C to reconnect", lambda: [c for c in carol_log.connecting if c.code == 3011])
        equal(connecting[0].reason, "force reconnect", "close reason")
        equal(carol_log.disconnected, [], "disconnected events (3011 must reconnect)")
        missed = await api(address, "publish", {"channel": "news", "data": {"n": 2}})
        equal(missed["offset"], 2, "offset of the missed publication")
        await asyncio.sleep(0.15)
        relay.open = True
        ctx = await until("the resubscription of client C", lambda: news_log.subscribed[subscribes:])
        await connected("client C again", carol, carol_log, connects + 1)
        equal((ctx[0].was_recovering, ctx[0].recovered), (True, True), "was_recovering, recovered")
        await until("the missed news publication", lambda: len(news_log.publications) >= 2)
        equal(news_log.offsets(), [1, 2], "news offsets")

        await api(address, "subscribe", {"user": "carol", "channel": "alerts"})
        alerts = await until("the server-side subscription", lambda: [s for s in carol_log.subscribed if s.channel == "alerts"])
        equal(alerts[0].recoverable, True, "server-side subscription is recoverable")
        await api(address, "publish", {"channel": "alerts", "data": {"alert": 1}})
        alert = await until("a server-side publication", lambda: carol_log.publications[:1])
        equal((alert[0].channel, alert[0].pub.data, alert[0].pub.offset), ("alerts", {"alert": 1}, 1), "server-side publication")

        await api(address, "unsubscribe", {"user": "carol", "channel": "news"})
        unsubscribed = await until("the server unsubscribe", lambda: news_log.unsubscribed[:1])
        equal(unsubscribed[0].code, 2000, "server unsubscribe code")
        await api(address, "disconnect", {"user": "carol"})
        disconnected = await until("client C to be disconnected", lambda: carol_log.disconnected[:1])
        equal(disconnected[0].code, 3503, "default API disconnect code")
        await asyncio.sleep(0.2)
        equal(len(carol_log.connected), connects + 1, "connects after a terminal code")

    await step("recovery after POST /api/disconnect with 3011; server-side subscribe and unsubscribe", recovery_after_api_disconnect)

    async def recovery_under_load():
        loaded, loaded_log = new_client()
        await within("client L connect()", loaded.connect())
        await connected("client L", loaded, loaded_log)
        stream_log = SubscriptionLog()
        stream = loaded.new_subscription("load", events=stream_log)
        await within("client L subscribe()", stream.subscribe())
        await within("client L subscribed", stream.ready())
        publishing = True
        top = 0

        async def publisher():
            nonlocal top
            n = 0
            while publishing:
                n += 1
                top = (await api(address, "publish", {"channel": "load", "data": {"n": n}}))["offset"]

        task = asyncio.create_task(publisher())
        try:
            for drop in (1, 2, 3):
                await asyncio.sleep(0.1)
                subscribes = len(stream_log.subscribed)
                relay.open = False
                relay.drop()
                await until(f"client L to notice drop {drop}", lambda: stream.state == SubscriptionState.SUBSCRIBING)
                await asyncio.sleep(0.03)
                relay.open = True
                ctx = await until(f"resubscription {drop}", lambda: stream_log.subscribed[subscribes:])
                equal(ctx[0].recovered, True, f"recovered after drop {drop}")
            await asyncio.sleep(0.1)
        finally:
            publishing = False
            await task
        await until(f"all {top} publications", lambda: len(stream_log.publications) >= top, 10)
        await asyncio.sleep(0.1)
        check(top > 10, f"the publisher overlapped the drops ({top} publications)")
        equal(stream_log.offsets(), list(range(1, top + 1)), "offsets of the loaded stream")
        await loaded.disconnect()

    await step("recovery under load: every offset exactly once, in order, across drops", recovery_under_load)

    async def token_expiry():
        check(TOKEN_SECRET, "SWITCHBOARD_TOKEN_SECRET must be set for the token steps")
        issued = []

        async def get_token():
            lifetimes = [2, 3600]  # the first connection expires soon, the refresh lasts
            token = hs256({"sub": "dave", "exp": int(time.time()) + lifetimes[min(len(issued), 1)]}, TOKEN_SECRET)
            issued.append(token)
            return token

        async def never():
            await asyncio.Future()

        expired = hs256({"sub": "dave", "exp": int(time.time()) - 60}, TOKEN_SECRET)
        dave, dave_log = new_client(token=expired, get_token=get_token)
        eve, eve_log = new_client(token=hs256({"sub": "eve", "exp": int(time.time()) + 2}, TOKEN_SECRET), get_token=never)
        await within("client D connect()", dave.connect())
        await within("client Eve connect()", eve.connect())
        await connected("client D", dave, dave_log)
        await connected("client Eve", eve, eve_log)
        equal(len(issued), 1, "get_token calls after the expired token got error 109")
        await until("the SDK to refresh the connection token", lambda: len(issued) >= 2)
        await asyncio.sleep(3)
        equal(dave.state, ClientState.CONNECTED, "state of the refreshed connection")
        equal(len(dave_log.connected), 1, "connects of the refreshed client")
        expiry = await until("the server to close the unrefreshed connection", lambda: [c for c in eve_log.connecting if c.code == 3005])
        equal(expiry[0].reason, "connection expired", "expiry reason")
        await dave.disconnect()
        await eve.disconnect()

    await step("token expiry: 109 then get_token; the SDK refreshes in time; no refresh means 3005", token_expiry)

    async def private_channels():
        check(TOKEN_SECRET, "SWITCHBOARD_TOKEN_SECRET must be set for the token steps")
        frank, frank_log = new_client(token=hs256({"sub": "frank"}, TOKEN_SECRET))
        await within("client F connect()", frank.connect())
        frank_id = (await connected("client F", frank, frank_log)).client
        refused_log = SubscriptionLog()
        refused = frank.new_subscription("$closed", events=refused_log)
        await within("subscribe() without a token", refused.subscribe())
        denied = await until("the refused subscription", lambda: refused_log.unsubscribed[:1])
        equal(denied[0].code, 103, "code without a subscription token")
        issued = []

        async def get_token(channel):
            lifetime = 2 if not issued else 3600  # the first expires soon, the refresh lasts
            issued.append(channel)
            claims = {"sub": "frank", "channel": channel, "exp": int(time.time()) + lifetime, "info": {"role": "keeper"}}
            return hs256(claims, TOKEN_SECRET)

        vault_log = SubscriptionLog()
        vault = frank.new_subscription("$vault", events=vault_log, get_token=get_token)
        await within("subscribe() to $vault", vault.subscribe())
        await within("$vault subscribed", vault.ready())
        presence = await within("presence of $vault", vault.presence())
        equal(presence.clients[frank_id].chan_info, {"role": "keeper"}, "subscription token info as chan_info")
        await until("the SDK to refresh the subscription token", lambda: len(issued) >= 2)
        await asyncio.sleep(2.5)
        equal(vault.state, SubscriptionState.SUBSCRIBED, "state of the refreshed subscription")
        equal(len(vault_log.subscribed), 1, "subscribed events of the refreshed subscription")
        await frank.disconnect()

    await step("private channels: subscription tokens, chan_info, sub_refresh in time", private_channels)

    async def token_channels():
        check(TOKEN_SECRET, "SWITCHBOARD_TOKEN_SECRET must be set for the token steps")
        gina, gina_log = new_client(token=hs256({"sub": "gina", "channels": ["inbox-gina"]}, TOKEN_SECRET))
        await within("client G connect()", gina.connect())
        await connected("client G", gina, gina_log)
        inbox = lambda: [s for s in gina_log.subscribed if s.channel == "inbox-gina"]
        first = await until("the token's server-side subscription", lambda: inbox()[:1])
        equal((first[0].channel, first[0].recoverable), ("inbox-gina", True), "server-side subscription")
        check(first[0].stream_position and first[0].stream_position.epoch, "the server-side subscription has an epoch")
        await api(address, "publish", {"channel": "inbox-gina", "data": {"n": 1}})
        await until("the first inbox publication", lambda: gina_log.publications[:1])
        relay.open = False
        await api(address, "disconnect", {"user": "gina", "disconnect": {"code": 3011, "reason": "force reconnect"}})
        await until("client G to reconnect", lambda: [c for c in gina_log.connecting if c.code == 3011])
        await api(address, "publish", {"channel": "inbox-gina", "data": {"n": 2}})
        await asyncio.sleep(0.15)
        relay.open = True
        await connected("client G again", gina, gina_log, 2)
        again = await until("the recovered server-side subscription", lambda: inbox()[1:])
        equal((again[0].was_recovering, again[0].recovered), (True, True), "was_recovering, recovered")
        await until("the missed inbox publication", lambda: len(gina_log.publications) >= 2)
        await asyncio.sleep(0.1)
        seen = [(p.channel, p.pub.offset, p.pub.data["n"]) for p in gina_log.publications]
        equal(seen, [("inbox-gina", 1, 1), ("inbox-gina", 2, 2)], "server-side publications")
        await gina.disconnect()

    await step("server-side subscriptions from the token channels claim are recovered on reconnect", token_channels)

    async def personal_channel():
        check(TOKEN_SECRET, "SWITCHBOARD_TOKEN_SECRET must be set for the token steps")
        hal, hal_log = new_client(token=hs256({"sub": "hal"}, TOKEN_SECRET))
        await within("client H connect()", hal.connect())
        await connected("client H", hal, hal_log)
        personal = await until("the personal channel subscription", lambda: [s for s in hal_log.subscribed if s.channel == "personal:#hal"])
        check(personal[0].stream_position and personal[0].stream_position.epoch, "the personal channel has an epoch")
        await api(address, "publish", {"channel": "personal:#hal", "data": {"note": "for hal"}})
        note = await until("a publication on the personal channel", lambda: [p for p in hal_log.publications if p.channel == "personal:#hal"])
        equal(note[0].pub.data, {"note": "for hal"}, "personal publication")
        await hal.disconnect()

    await step("a known user's connection is subscribed to its personal channel (subscribe_to_user_personal_channel)", personal_channel)

    async def release():
        await within("unsubscribe()", chat.unsubscribe())
        equal(chat.state, SubscriptionState.UNSUBSCRIBED, "subscription state")

        async def empty():
            seen = await api(address, "presence", {"channel": "chat"})
            return not seen["presence"], seen

        await eventually("presence of chat to be empty", empty)
        await within("disconnect()", alice.disconnect())
        equal(alice.state, ClientState.DISCONNECTED, "client state")

    await step("unsubscribe and disconnect release presence", release)
    await relay.close()


def run(entry=None, script="centrifuge_python.py", passed="all centrifuge-python compatibility checks passed"):
    """Runs `entry(address)` (this script's `main` by default) on the command line's HOST:PORT
    within TOTAL seconds; a failure prints its step and exits 1."""
    entry = entry or main
    if len(sys.argv) != 2 or not re.fullmatch(r"[^/\s]+:\d+", sys.argv[1]):
        print(f"usage: python {script} HOST:PORT", file=sys.stderr)
        sys.exit(2)

    async def bounded():
        try:
            await asyncio.wait_for(entry(sys.argv[1]), TOTAL)
        except asyncio.TimeoutError:
            raise CheckFailed(f"the whole test took over {TOTAL} s") from None

    try:
        asyncio.run(bounded())
    except Exception as error:  # noqa: BLE001 - any failure ends the test with its story
        detail = str(error) if isinstance(error, CheckFailed) else traceback.format_exc()
        print(f'FAIL in step "{current_step}": {detail}', file=sys.stderr)
        sys.exit(1)
    print(passed)


if __name__ == "__main__":
    run()
