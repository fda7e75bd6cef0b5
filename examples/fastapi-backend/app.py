"""A Switchboard application backend, written with FastAPI.

Switchboard holds the WebSockets; this app keeps the rules. It never touches a WebSocket: it answers
Switchboard's HTTP questions (Centrifugo's proxy JSON) and calls Switchboard's server API.

    POST /login                   a tiny login: sets the `session` cookie
    POST /switchboard/connect     connect proxy: the session cookie becomes the connection's user
    POST /switchboard/subscribe   subscribe proxy: `admin:` channels are for admins only
    POST /switchboard/rpc         RPC proxy: the methods `sum` and `get_profile`
    POST /switchboard/events      webhooks: signed batches of events, handled after the response
    GET  /online                  who is online, as the webhooks told it
    POST /announce                publishes to a channel through Switchboard's server API

The ideas of the guide, where they show:
- every handler is `async def`: it runs on the event loop and must never block it, so its I/O
  (the call to Switchboard's API) is awaited through `httpx.AsyncClient`;
- webhooks are acknowledged at once and handled with `BackgroundTasks`, after the response;
- an `asyncio.Semaphore` bounds the calls to Switchboard's API in flight, however many
  `/announce` requests arrive together.

Configuration (environment): SWITCHBOARD_URL (default http://127.0.0.1:8000),
SWITCHBOARD_API_KEY and WEBHOOK_SECRET (required: the same values as Switchboard's `--api-key`
and `--webhook-secret`).
"""

import asyncio
import hashlib
import hmac
import json
import os
import secrets
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from fastapi import BackgroundTasks, Cookie, Depends, FastAPI, Header, HTTPException, Request, Response
from pydantic import BaseModel


def required(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise SystemExit(f"app.py: set the environment variable {name} (see README.md)")
    return value


SWITCHBOARD_URL = os.environ.get("SWITCHBOARD_URL", "http://127.0.0.1:8000").rstrip("/")
SWITCHBOARD_API_KEY = required("SWITCHBOARD_API_KEY")
WEBHOOK_SECRET = required("WEBHOOK_SECRET").encode()

# --- Users and sessions ---------------------------------------------------------------------
# A demo's stand-in for a database: two users with plain-text passwords (a real app stores
# password hashes) and sessions kept in memory (they are gone when the app restarts).


@dataclass(frozen=True)
class User:
    name: str
    display_name: str
    password: str
    admin: bool


USERS = {
    "alice": User("alice", "Alice", password="wonderland", admin=False),
    "root": User("root", "The Operator", password="change-me", admin=True),
}

# session id (the cookie's value) -> user name
SESSIONS: dict[str, str] = {}


def current_user(session: Annotated[str | None, Cookie()] = None) -> User | None:
    """The user of the request's session cookie, if any.

    The same dependency serves the browser's own requests and Switchboard's proxy requests:
    Switchboard forwards the `Cookie` header of the client's WebSocket (`--proxy-http-headers
    Cookie`), so the connect proxy sees the cookie `/login` set.
    """
    return USERS.get(SESSIONS.get(session or "", ""))


class Login(BaseModel):
    user: str
    password: str


# --- Talking to Switchboard's server API ----------------------------------------------------

# At most this many calls to Switchboard's API in flight: further ones wait for a free slot (the
# guide's ovens: a fixed number, whoever is hungry), so a burst of /announce requests cannot
# become a burst of connections to Switchboard.
api_slots = asyncio.Semaphore(8)


@asynccontextmanager
async def lifespan(app: FastAPI):
    # One client for the app's whole life: it keeps its connections to Switchboard open
    # (keep-alive) instead of opening one per call.
    async with httpx.AsyncClient(
        base_url=SWITCHBOARD_URL, headers={"X-API-Key": SWITCHBOARD_API_KEY}, timeout=5.0
    ) as client:
        app.state.switchboard = client
        yield


app = FastAPI(title="Switchboard backend (FastAPI example)", lifespan=lifespan)


def switchboard_api(request: Request) -> httpx.AsyncClient:
    return request.app.state.switchboard


async def publish(api: httpx.AsyncClient, channel: str, data: Any) -> dict:
    """Publishes `data` to `channel` through `POST /api/publish`; returns Switchboard's result."""
    try:
        async with api_slots:
            response = await api.post("/api/publish", json={"channel": channel, "data": data})
        reply = response.json()
    except (httpx.HTTPError, ValueError) as e:
        raise HTTPException(502, f"Switchboard did not answer: {e!r}") from None
    if response.status_code != 200 or "error" in reply:
        raise HTTPException(502, f"Switchboard refused the publication: {reply}")
    return reply["result"]


# --- Routes for the browser -----------------------------------------------------------------


@app.post("/login")
async def login(body: Login, response: Response) -> dict:
    user = USERS.get(body.user)
    # compare_digest takes as long whatever the guess: no timing hint about the password.
    if user is None or not hmac.compare_digest(body.password.encode(), user.password.encode()):
        raise HTTPException(401, "wrong user or password")
    session = secrets.token_urlsafe(32)
    SESSIONS[session] = user.name
    # Cookies are per host, not per port: on 127.0.0.1 a browser also sends this one to
    # Switchboard on port 8000, as it would behind one domain in production.
    response.set_cookie("session", session, httponly=True, samesite="lax")
    return {"user": user.name}


class Announcement(BaseModel):
    text: str
    channel: str = "news"


@app.post("/announce")
async def announce(
    body: Announcement,
    user: Annotated[User | None, Depends(current_user)],
    api: Annotated[httpx.AsyncClient, Depends(switchboard_api)],
) -> dict:
    """Publishes an announcement of the logged-in user to every subscriber of the channel."""
    if user is None:
        raise HTTPException(401, "log in first")
    return await publish(api, body.channel, {"text": body.text, "from": user.name})


@app.get("/online")
async def online() -> dict:
    """Who is online, and the last events, as the webhooks reported them."""
    return {
        "users": {name: len(clients) for name, clients in sorted(ONLINE.items())},
        "recent_events": list(EVENT_LOG),
    }


# --- Proxy hooks: Switchboard asks, the app decides -----------------------------------------
# Each answer is Centrifugo's proxy JSON: {"result": {...}} lets the command through,
# {"error": {"code", "message"}} fails it with that error (codes 400-1999 are the app's),
# {"disconnect": {"code", "reason"}} closes the connection.


def error(code: int, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


class ConnectRequest(BaseModel):
    client: str
    name: str = ""


class SubscribeRequest(BaseModel):
    client: str
    user: str
    channel: str


class RPCRequest(BaseModel):
    client: str
    user: str
    method: str
    data: Any = None


@app.post("/switchboard/connect")
async def connect_proxy(body: ConnectRequest, user: Annotated[User | None, Depends(current_user)]) -> dict:
    if user is None:
        # 4500-4999: the SDK does not reconnect; logging in comes first.
        return {"disconnect": {"code": 4501, "reason": "unauthorized"}}
    # `info` is what other clients see of this connection (presence, join/leave, publications).
    return {"result": {"user": user.name, "info": {"name": user.display_name}}}


@app.post("/switchboard/subscribe")
async def subscribe_proxy(body: SubscribeRequest) -> dict:
    user = USERS.get(body.user)
    if body.channel.startswith("admin:") and (user is None or not user.admin):
        return error(403, "permission denied")
    return {"result": {}}


@app.post("/switchboard/rpc")
async def rpc_proxy(body: RPCRequest) -> dict:
    if body.method == "sum":
        numbers = body.data.get("numbers") if isinstance(body.data, dict) else None
        if not isinstance(numbers, list) or not all(
            isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers
        ):
            return error(400, 'sum expects {"numbers": [...]}')
        return {"result": {"data": {"sum": sum(numbers)}}}
    if body.method == "get_profile":
        user = USERS.get(body.user)
        if user is None:
            return error(404, "no such user")
        return {"result": {"data": {"user": user.name, "name": user.display_name, "admin": user.admin}}}
    return error(404, f"unknown method {body.method!r}")


# --- Webhooks: what happened, after the fact ------------------------------------------------

# user -> ids of their open connections (a user may have several tabs open)
ONLINE: dict[str, set[str]] = {}
# the last events, newest last
EVENT_LOG: deque[dict] = deque(maxlen=50)
# ids of the events already handled: delivery is at least once, so a batch may come twice
SEEN_IDS: deque[str] = deque(maxlen=10_000)


@app.post("/switchboard/events")
async def webhook(
    request: Request,
    background_tasks: BackgroundTasks,
    signature: Annotated[str, Header(alias="X-Switchboard-Signature")] = "",
) -> dict:
    # The signature covers the raw bytes, so read them before anything parses them.
    body = await request.body()
    expected = "sha256=" + hmac.new(WEBHOOK_SECRET, body, hashlib.sha256).hexdigest()
    # compare_digest compares in constant time; as bytes, since a header may hold any byte.
    if not hmac.compare_digest(expected.encode(), signature.encode("latin-1")):
        raise HTTPException(401, "bad signature")
    try:
        events = json.loads(body)["events"]
    except (ValueError, KeyError, TypeError):
        raise HTTPException(400, "expected {\"events\": [...]}") from None
    # Answer now, handle after the response: Switchboard's lane moves on at once.
    background_tasks.add_task(handle_events, events)
    return {}


async def handle_events(events: list[dict]) -> None:
    """Applies a batch of events to the in-memory state.

    An `async def` without any `await` runs on the event loop from start to end, so the state
    needs no lock. (A plain `def` task would run in a thread pool, beside the request handlers.)
    """
    for event in events:
        if event["id"] in SEEN_IDS:
            continue
        SEEN_IDS.append(event["id"])
        EVENT_LOG.append(event)
        user, client = event.get("user", ""), event.get("client", "")
        if event["type"] == "connect" and user:
            ONLINE.setdefault(user, set()).add(client)
        elif event["type"] == "disconnect" and user in ONLINE:
            ONLINE[user].discard(client)
            if not ONLINE[user]:
                del ONLINE[user]
