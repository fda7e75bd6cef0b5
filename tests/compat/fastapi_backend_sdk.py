"""End-to-end test of the FastAPI example backend (examples/fastapi-backend) with the official Python
SDK (PyPI `centrifuge-python`): a real Switchboard asks the real FastAPI app through its proxy hooks
and webhooks, and the app publishes through Switchboard's server API.

Usage: python fastapi_backend_sdk.py SWITCHBOARD_HOST:PORT BACKEND_URL

Switchboard must run with the example's proxy endpoints (connect, rpc, subscribe), the `Cookie`
header forwarded, webhooks to the example, and the example's namespaces. Every wait is bounded; the
first failed check prints what was expected and exits 1. Progress goes to stdout, one line per
passed step.
"""

import asyncio
import hashlib
import hmac
import inspect
import json
import sys
import time
import traceback

import httpx
from centrifuge import Client, ClientEventHandler, ClientState, ReplyError, SubscriptionEventHandler

WAIT = 5.0
"""Longest wait for any single expected event, in seconds."""
WEBHOOK_WAIT = 10.0
"""Longest wait for the backend to learn something through a webhook."""
TOTAL = 50.0
"""The whole script must finish in this time."""

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
    """Polls `condition` (a function, plain or async) until it returns a truthy value, which is
    returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def within(what, awaitable, timeout=WAIT):
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise CheckFailed(f"timed out after {timeout} s waiting for {what}") from None


async def fails_with(what, awaitable, code, message):
    try:
        result = await within(what, awaitable)
    except ReplyError as error:
        equal((error.code, error.message), (code, message), f"{what}: error")
        return
    raise CheckFailed(f"{what}: expected error {code}, got success {result!r}")


class ClientLog(ClientEventHandler):
    """Records the client's connection events."""

    def __init__(self):
        self.connected, self.disconnected = [], []

    async def on_connected(self, ctx):
        self.connected.append(ctx)

    async def on_disconnected(self, ctx):
        self.disconnected.append(ctx)


class SubscriptionLog(SubscriptionEventHandler):
    """Records a subscription's events."""

    def __init__(self):
        self.subscribed, self.unsubscribed, self.publications = [], [], []

    async def on_subscribed(self, ctx):
        self.subscribed.append(ctx)

    async def on_unsubscribed(self, ctx):
        self.unsubscribed.append(ctx)

    async def on_publication(self, ctx):
        self.publications.append(ctx.pub)


async def main(switchboard, backend_url):
    ws_url = f"ws://{switchboard}/connection/websocket"
    # A fresh HTTP client per user: each keeps its own cookies, as each browser would.
    http = httpx.AsyncClient(base_url=backend_url, timeout=WAIT, trust_env=False)
    root_http = httpx.AsyncClient(base_url=backend_url, timeout=WAIT, trust_env=False)
    state = {}

    def new_client(cookie=None):
        log = ClientLog()
        # The SDK sends `headers` as real HTTP headers of the WebSocket request; Switchboard
        # forwards the `Cookie` one to the connect proxy (--proxy-http-headers Cookie).
        headers = {"Cookie": cookie} if cookie else None
        client = Client(ws_url, events=log, headers=headers, timeout=WAIT, proxy=None)
        return client, log

    async def users_online():
        response = await http.get("/online")
        equal(response.status_code, 200, "GET /online status")
        return response.json()["users"]

    async def login():
        refused = await http.post("/login", json={"user": "alice", "password": "wrong"})
        equal(refused.status_code, 401, "login with a wrong password")
        response = await http.post("/login", json={"user": "alice", "password": "wonderland"})
        equal(response.status_code, 200, f"login status ({response.text})")
        equal(response.json(), {"user": "alice"}, "login answer")
        session = http.cookies.get("session")
        check(session, f"login sets the session cookie (Set-Cookie: {response.headers.get('set-cookie')!r})")
        state["cookie"] = f"session={session}"

    await step("POST /login refuses a wrong password and sets the session cookie", login)

    async def refused_without_session():
        for what, cookie in [("no cookie", None), ("an unknown session", "session=forged")]:
            client, log = new_client(cookie)
            await within(f"connect() with {what}", client.connect())
            closed = await until(f"the connection with {what} to be closed", lambda: log.disconnected)
            equal((closed[0].code, closed[0].reason), (4501, "unauthorized"), f"disconnect with {what}")
            await asyncio.sleep(0.2)  # 4501 must be final: the SDK does not reconnect
            equal(client.state, ClientState.DISCONNECTED, f"state after the disconnect with {what}")
            equal(len(log.connected), 0, f"connects with {what}")

    await step("connect without a session: the connect proxy's disconnect 4501, no reconnect", refused_without_session)

    alice, alice_log = new_client(state["cookie"])

    async def connect_as_alice():
        await within("connect() with alice's cookie", alice.connect())
        await until("alice to be connected", lambda: alice.state == ClientState.CONNECTED)
        profile = await within("rpc get_profile", alice.rpc("get_profile", {}))
        equal(profile.data, {"user": "alice", "name": "Alice", "admin": False}, "get_profile of the connection's user")

    await step("connect with the session cookie: the connection's user is the cookie's (rpc get_profile)", connect_as_alice)

    async def rpc():
        reply = await within("rpc sum", alice.rpc("sum", {"numbers": [1, 2, 3.5]}))
        equal(reply.data, {"sum": 6.5}, "sum")
        await fails_with("rpc sum without numbers", alice.rpc("sum", {"n": 1}), 400, 'sum expects {"numbers": [...]}')
        await fails_with("rpc no_such_method", alice.rpc("no_such_method", {}), 404, "unknown method 'no_such_method'")

    await step("RPC answered by FastAPI: sum; bad data and an unknown method get the backend's errors", rpc)

    news_log = SubscriptionLog()
    news = alice.new_subscription("news", events=news_log)

    async def subscriptions():
        admin_log = SubscriptionLog()
        admin = alice.new_subscription("admin:alerts", events=admin_log)
        await within("subscribe() to admin:alerts", admin.subscribe())
        refused = await until("the refused subscription", lambda: admin_log.unsubscribed)
        equal((refused[0].code, refused[0].reason), (403, "permission denied"), "refusal of admin:alerts")
        equal(len(admin_log.subscribed), 0, "subscribed events of admin:alerts")
        await within("subscribe() to news", news.subscribe())
        await within("news subscribed", news.ready())
        chat = alice.new_subscription("chat:lobby")
        await within("subscribe() to chat:lobby", chat.subscribe())
        await within("chat:lobby subscribed", chat.ready())

    await step("subscribe proxy: admin:alerts refused to alice with the backend's 403; news and chat:lobby allowed", subscriptions)

    async def admin_subscribes():
        response = await root_http.post("/login", json={"user": "root", "password": "change-me"})
        equal(response.status_code, 200, f"root's login ({response.text})")
        root, root_log = new_client(f"session={root_http.cookies.get('session')}")
        await within("root's connect()", root.connect())
        await until("root to be connected", lambda: root.state == ClientState.CONNECTED)
        alerts = root.new_subscription("admin:alerts")
        await within("root's subscribe() to admin:alerts", alerts.subscribe())
        await within("root's admin:alerts subscribed", alerts.ready())
        await root.disconnect()

    await step("subscribe proxy: an admin may subscribe to admin:alerts", admin_subscribes)

    async def online_from_webhooks():
        users = await until("GET /online to list alice", lambda: users_online_with("alice"), WEBHOOK_WAIT)
        equal(users.get("alice"), 1, "alice's connections in /online")

    async def users_online_with(name):
        users = await users_online()
        return users if name in users else None

    await step("signed webhooks reach FastAPI: GET /online lists alice", online_from_webhooks)

    async def announce():
        anonymous = httpx.AsyncClient(base_url=backend_url, timeout=WAIT, trust_env=False)
        refused = await anonymous.post("/announce", json={"text": "nope"})
        await anonymous.aclose()
        equal(refused.status_code, 401, "POST /announce without a session")
        response = await http.post("/announce", json={"channel": "news", "text": "hello from FastAPI"})
        equal(response.status_code, 200, f"POST /announce status ({response.text})")
        check("offset" in response.json(), f"/announce returns Switchboard's publish result: {response.text}")
        publication = await until("the announcement to reach the subscriber", lambda: news_log.publications)
        equal(publication[0].data, {"text": "hello from FastAPI", "from": "alice"}, "announcement data")
        # A channel of an undeclared namespace: Switchboard's API refuses it (102), FastAPI says 502.
        response = await http.post("/announce", json={"channel": "nowhere:x", "text": "lost"})
        equal(response.status_code, 502, f"POST /announce to a refused channel ({response.text})")

    await step("POST /announce publishes through the server API (httpx) and reaches the SDK's subscription", announce)

    async def forged_webhooks():
        body = json.dumps({"events": [{"type": "connect", "id": "forged", "time_ms": 1, "client": "x", "user": "mallory"}]})
        for what, signature in [
            ("no signature", None),
            ("a wrong signature", "sha256=" + "0" * 64),
            ("another secret's signature", "sha256=" + hmac.new(b"guess", body.encode(), hashlib.sha256).hexdigest()),
        ]:
            headers = {"Content-Type": "application/json"}
            if signature:
                headers["X-Switchboard-Signature"] = signature
            response = await http.post("/switchboard/events", content=body, headers=headers)
            equal(response.status_code, 401, f"webhook with {what}")
        check("mallory" not in await users_online(), "a forged event changed nothing")

    await step("webhooks without the right signature get 401 and change nothing", forged_webhooks)

    async def offline_after_disconnect():
        await within("alice's disconnect()", alice.disconnect())
        # root disconnected earlier, on a connection of its own (its events may use another lane).
        await until("GET /online to list neither alice nor root", nobody_online, WEBHOOK_WAIT)

    async def nobody_online():
        users = await users_online()
        return "alice" not in users and "root" not in users

    await step("after the SDK disconnects, the disconnect webhooks take alice (and root) out of GET /online", offline_after_disconnect)

    await http.aclose()
    await root_http.aclose()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2]), TOTAL))
    except CheckFailed as failure:
        print(f"FAILED at step '{current_step}': {failure}", flush=True)
        sys.exit(1)
    except asyncio.TimeoutError:
        print(f"FAILED: the script ran out of its {TOTAL} s at step '{current_step}'", flush=True)
        sys.exit(1)
    except Exception:
        print(f"FAILED at step '{current_step}' with an exception:", flush=True)
        traceback.print_exc()
        sys.exit(1)
