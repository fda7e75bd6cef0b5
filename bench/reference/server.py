"""Reference server: the seed's FastAPI WebSocket chat, grown just enough to speak the same
protocol subset as Switchboard's bench (Centrifugo v2 JSON client protocol + server API).

It is written the way the seed's WebSocket chapter teaches: one event loop, a
`ConnectionManager` holding the open WebSockets, a `while True: await websocket.receive_text()`
loop per client, and a broadcast that awaits `send_text` for each subscriber in turn. It exists
to be measured against, not to be used: no auth, no history, no pings, no bounded queues (a
subscriber that stops reading stalls the broadcast loop for everyone).

Supported: `connect`, `subscribe`, `unsubscribe`, `publish` (pushed to every subscriber of the
channel), `rpc` method `echo`, client pongs (`{}`), and `POST /api/publish`.

Run: uvicorn server:app --host 127.0.0.1 --port 8001 --log-level warning
"""

import json
import uuid

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

app = FastAPI()


def encode(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"))


class ConnectionManager:
    """The seed's connection manager, with channels: who is connected, who listens where."""

    def __init__(self) -> None:
        self.active_connections: list[WebSocket] = []
        self.channels: dict[str, set[WebSocket]] = {}

    async def connect(self, websocket: WebSocket) -> None:
        await websocket.accept()
        self.active_connections.append(websocket)

    def disconnect(self, websocket: WebSocket) -> None:
        if websocket in self.active_connections:
            self.active_connections.remove(websocket)
        for channel in list(self.channels):
            subscribers = self.channels[channel]
            subscribers.discard(websocket)
            if not subscribers:
                del self.channels[channel]

    def subscribe(self, websocket: WebSocket, channel: str) -> None:
        self.channels.setdefault(channel, set()).add(websocket)

    def unsubscribe(self, websocket: WebSocket, channel: str) -> None:
        subscribers = self.channels.get(channel)
        if subscribers is not None:
            subscribers.discard(websocket)
            if not subscribers:
                del self.channels[channel]

    async def broadcast(self, channel: str, data) -> None:
        """Encodes the publication once and sends it to every subscriber, one after another."""
        message = encode({"push": {"channel": channel, "pub": {"data": data}}})
        for websocket in list(self.channels.get(channel, ())):
            try:
                await websocket.send_text(message)
            except Exception:
                self.disconnect(websocket)


manager = ConnectionManager()


@app.websocket("/connection/websocket")
async def websocket_endpoint(websocket: WebSocket) -> None:
    await manager.connect(websocket)
    try:
        while True:
            frame = await websocket.receive_text()
            replies = []
            for line in frame.split("\n"):
                if not line.strip():
                    continue
                command = json.loads(line)
                reply = await handle(websocket, command)
                if reply is not None:
                    replies.append(encode(reply))
            if replies:
                await websocket.send_text("\n".join(replies))
    except WebSocketDisconnect:
        manager.disconnect(websocket)
    finally:
        manager.disconnect(websocket)


async def handle(websocket: WebSocket, command: dict):
    """One command → its reply (None for a pong)."""
    command_id = command.get("id", 0)
    if not command_id:
        return None  # a pong, or a `send` we ignore
    if "connect" in command:
        client = str(uuid.uuid4())
        return {"id": command_id, "connect": {"client": client, "version": "reference"}}
    if "subscribe" in command:
        manager.subscribe(websocket, command["subscribe"]["channel"])
        return {"id": command_id, "subscribe": {}}
    if "unsubscribe" in command:
        manager.unsubscribe(websocket, command["unsubscribe"]["channel"])
        return {"id": command_id, "unsubscribe": {}}
    if "publish" in command:
        publish = command["publish"]
        await manager.broadcast(publish["channel"], publish.get("data"))
        return {"id": command_id, "publish": {}}
    if "rpc" in command:
        rpc = command["rpc"]
        if rpc.get("method") == "echo":
            return {"id": command_id, "rpc": {"data": rpc.get("data")}}
        return {"id": command_id, "error": {"code": 104, "message": "method not found"}}
    return {"id": command_id, "error": {"code": 107, "message": "bad request"}}


@app.post("/api/publish")
async def api_publish(request: Request) -> JSONResponse:
    body = await request.json()
    await manager.broadcast(body["channel"], body.get("data"))
    return JSONResponse({"result": {}})


@app.get("/health")
async def health() -> dict:
    return {}
