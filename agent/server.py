"""``duplex serve``: the Realtime WebSocket server (a documented subset of the OpenAI Realtime API).

One FastAPI app, one WebSocket route ``/v1/realtime``; each connection is one conversation
(:class:`agent.realtime_session.RealtimeConnection`), isolated from the others. The models are loaded
once per process and shared: every connection opens its own backend session (its own KV cache) on a
shared model, whose forward passes run in worker threads so the event loop keeps serving the other
sockets. The event matrix is in ``docs/realtime-events.md``.

Guards: optional token auth (``Authorization: Bearer``, ``?token=`` or the browser subprotocol
``openai-insecure-api-key.<token>``; required when bound beyond loopback), a message size limit, a
connection limit, per-connection event and audio rate limits, a bounded outbound queue. A bad client
gets an ``error`` event or a clean close, never a server crash.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agent.config import SessionConfig

log = logging.getLogger(__name__)

REALTIME_PATH = "/v1/realtime"
SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."


@dataclass
class ServerConfig:
    """The Realtime server.

    Attributes:
        host: address to bind; anything beyond loopback needs ``token``.
        port: TCP port (0 = any free port).
        token: shared secret clients must present (None = no auth, loopback only).
        max_connections: concurrent conversations; one more gets ``server_busy`` and a close (1013).
        max_message_bytes: largest client message handled (``message_too_large`` above it); messages
            over ``4 x`` this are refused by the WebSocket layer itself (close 1009).
        max_audio_bytes: largest decoded audio chunk in one ``input_audio_buffer.append``.
        max_events_per_second: sustained client events per second per connection (burst twice that);
            events over it are dropped and the client is told (``rate_limited``).
        max_control_events_per_second: once that budget is spent, control events (``session.update``,
            ``response.cancel``/``create``, ``conversation.item.truncate``, ``input_audio_buffer.clear``/``commit``;
            small JSON text) still get through at this rate (burst twice that), so a flood cannot swallow a cancel.
        max_audio_ahead_seconds: audio a client may send ahead of real time; more is dropped and the
            client is told (``rate_limited``). Matches the session's own bounded frame queue.
        outbound_queue: server events waiting for a slow client before it is disconnected (1008).
        idle_timeout_seconds: close a connection that sent nothing for this long (0 = never).
        default_input_rate / default_output_rate: PCM16 rates until ``session.update`` says otherwise.
        response_quiet_ms: agent silence that ends a response (``response.done`` completed).
        silence_duration_ms: user silence that ends user speech (``speech_stopped``), default hangover.
        frame_events: send ``x_duplex.frame`` and ``x_duplex.latency`` per frame by default.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_connections: int = 8
    max_message_bytes: int = 1 << 20
    max_audio_bytes: int = 1 << 19
    max_events_per_second: float = 200.0
    max_control_events_per_second: float = 10.0
    max_audio_ahead_seconds: float = 2.0
    outbound_queue: int = 2000
    idle_timeout_seconds: float = 300.0
    default_input_rate: int = 24000
    default_output_rate: int = 24000
    response_quiet_ms: float = 400.0
    silence_duration_ms: float = 240.0
    frame_events: bool = True

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}.")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}.")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}.")
        if self.token is not None and not self.token.strip():
            raise ValueError("The token must not be empty.")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond loopback without a token (one sentence saying what to do)."""
    if not is_loopback(host) and not token:
        raise ValueError(f"Refusing to listen on {host} without a token: anyone on the network could use the "
                         f"model. Pass --token SECRET (or set DUPLEX_TOKEN), or bind 127.0.0.1.")


# ---- models ---------------------------------------------------------------------------------------

@dataclass
class ModelEntry:
    """One servable model: a checkpoint directory (loaded on first use) or a ready backend."""

    name: str
    path: Path | None = None
    backend: Any = None
    codec: Any = None
    adapters: dict[str, Path] = field(default_factory=dict)

    @property
    def frame_ms(self) -> float | None:
        return self.codec.spec.frame_ms if self.codec is not None else None


class ModelRegistry:
    """The models this server can host, by name; the first one is the default.

    Loading happens once per model (thread-safe); every connection shares the loaded backend.
    """

    def __init__(self, engine: str = "auto", threads: int | None = None, codec_weights: str | Path | None = None,
                 session_config: SessionConfig | None = None) -> None:
        self.engine = engine
        self.threads = threads
        self.codec_weights = codec_weights
        self.session_config = session_config or SessionConfig()
        self.entries: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()

    @property
    def default(self) -> str:
        if not self.entries:
            raise ValueError("No model is configured.")
        return next(iter(self.entries))

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def add_dir(self, name: str, path: str | Path, adapters: dict[str, Path] | None = None) -> ModelEntry:
        if name in self.entries:
            raise ValueError(f"Two models are named {name!r}; name them apart with --model NAME=DIR.")
        entry = self.entries[name] = ModelEntry(name, Path(path), adapters=dict(adapters or {}))
        return entry

    def add_backend(self, name: str, backend: Any, codec: Any) -> ModelEntry:
        """A ready backend (tests inject scripted ones)."""
        entry = self.entries[name] = ModelEntry(name, None, backend, codec)
        return entry

    def get(self, name: str | None) -> ModelEntry:
        """The loaded entry (loads it on first use; blocking, call from a thread)."""
        name = name or self.default
        entry = self.entries.get(name)
        if entry is None:
            raise KeyError(name)
        if entry.backend is None:
            with self._lock:
                if entry.backend is None:
                    from agent.models import codec_for_layout
                    from think.transformers_backend import TransformersBackend

                    t0 = time.perf_counter()
                    backend = TransformersBackend.from_dir(entry.path, context=self.session_config.context,
                                                           threads=self.threads, engine=self.engine)
                    entry.codec = codec_for_layout(backend.layout, self.codec_weights)
                    entry.backend = backend
                    log.info("loaded model %s from %s in %.2f s", name, entry.path, time.perf_counter() - t0)
        return entry

    def describe(self) -> list[dict]:
        return [{"id": e.name, "object": "model", "path": str(e.path) if e.path else None,
                 "loaded": e.backend is not None, "adapters": sorted(e.adapters)} for e in self.entries.values()]


# ---- the server -----------------------------------------------------------------------------------

class RealtimeServer:
    """Connection bookkeeping, auth and limits around :class:`RealtimeConnection`."""

    def __init__(self, registry: ModelRegistry, config: ServerConfig | None = None) -> None:
        self.registry = registry
        self.config = config or ServerConfig()
        self.connections: set = set()
        self.served = 0
        self.refused = 0

    def _client_token(self, ws) -> tuple[str | None, str | None]:
        """(token presented, subprotocol to accept)."""
        subprotocol = None
        offered = list(ws.scope.get("subprotocols") or [])
        token = None
        auth = ws.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        if token is None and "token" in ws.query_params:
            token = ws.query_params["token"]
        for p in offered:
            if p.startswith(SUBPROTOCOL_KEY_PREFIX) and token is None:
                token = p[len(SUBPROTOCOL_KEY_PREFIX):]
        if offered:
            # A browser fails the handshake unless we pick one of its subprotocols.
            subprotocol = "realtime" if "realtime" in offered else offered[0]
        return token, subprotocol

    def authorized(self, token: str | None) -> bool:
        want = self.config.token
        if not want:
            return True
        return token is not None and hmac.compare_digest(token.encode(), want.encode())

    async def handle(self, ws) -> None:
        """Serve one WebSocket until it closes. Never raises."""
        from agent.realtime_session import RealtimeConnection
        from streaming.events import error_event

        token, subprotocol = self._client_token(ws)
        try:
            await ws.accept(subprotocol=subprotocol)
        except Exception:  # the client went away during the handshake
            return
        refusal = None
        if not self.authorized(token):
            refusal = (error_event("invalid_api_key", "Missing or wrong token: send 'Authorization: Bearer <token>' "
                                   "or add ?token=<token> to the URL.", error_type="authentication_error"), 1008)
        elif len(self.connections) >= self.config.max_connections:
            refusal = (error_event("server_busy", f"The server is serving its maximum of "
                                   f"{self.config.max_connections} conversations; try again later.",
                                   error_type="server_error"), 1013)
        if refusal is not None:
            self.refused += 1
            await _send_and_close(ws, refusal[0], refusal[1])
            return
        conn = RealtimeConnection(ws, self, requested_model=ws.query_params.get("model"))
        self.connections.add(conn)
        self.served += 1
        try:
            await conn.run()
        except Exception:  # never let one connection take the server down
            log.exception("connection %s failed", conn.id)
        finally:
            self.connections.discard(conn)

    def health(self) -> dict:
        return {"status": "ok", "connections": len(self.connections), "served": self.served,
                "refused": self.refused, "max_connections": self.config.max_connections,
                "models": self.registry.names, "auth": bool(self.config.token)}


async def _send_and_close(ws, event: dict, code: int) -> None:
    import json

    try:
        await ws.send_text(json.dumps(event))
        await ws.close(code=code, reason=event["error"]["code"])
    except Exception:
        pass


def create_app(server: RealtimeServer):
    """The FastAPI app with the Realtime route (the demo mounts its page on the same app)."""
    from fastapi import FastAPI
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute

    app = FastAPI(title="duplex-agent realtime", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.duplex = server

    async def realtime(ws) -> None:  # a plain Starlette route: the endpoint gets the WebSocket itself
        await server.handle(ws)

    app.router.routes.append(WebSocketRoute(REALTIME_PATH, realtime))

    @app.get("/healthz")
    async def healthz() -> dict:
        return server.health()

    async def models(request) -> JSONResponse:
        # The list names the server's model directories: behind the same token as the conversations.
        if not server.authorized(server._client_token(request)[0]):
            return JSONResponse({"error": {"type": "authentication_error", "code": "invalid_api_key", "param": None,
                                           "message": "Missing or wrong token: send 'Authorization: Bearer <token>' "
                                                      "or add ?token=<token> to the URL."}}, status_code=401)
        return JSONResponse({"object": "list", "data": server.registry.describe()})

    app.router.routes.append(Route("/v1/models", models, methods=["GET"]))

    return app


def uvicorn_config(app, host: str, port: int, config: ServerConfig, log_level: str = "warning"):
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level,
        ws_max_size=4 * config.max_message_bytes,  # larger frames: close 1009 by the WebSocket layer
        ws_per_message_deflate=False,  # base64 PCM barely compresses; save the CPU
        ws_ping_interval=20.0, ws_ping_timeout=20.0,
    )


class BackgroundServer:
    """Runs an app with uvicorn in a background thread on a pre-bound socket (tests, benchmarks)::

        with BackgroundServer(app, config) as srv:
            url = srv.ws_url  # ws://127.0.0.1:<port>/v1/realtime
    """

    def __init__(self, app, config: ServerConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.config = config or ServerConfig()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn_config(app, host, self.port, self.config))
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self.thread = threading.Thread(target=self._run, name="duplex-server", daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}{REALTIME_PATH}"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("The Realtime server did not start.")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def parse_model_args(models: list[str] | None, announce: Callable[[str], None] | None = None) -> list[tuple[str, Path]]:
    """``--model DIR`` / ``--model NAME=DIR`` (repeatable) -> [(name, dir)]; none = the embedded default."""
    from agent.models import resolve_model

    if not models:
        path = resolve_model(None, announce=announce)
        return [(path.name if path.name != "default_model" else "default", path)]
    out = []
    for item in models:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = "", item
        resolved = resolve_model(path)
        out.append((name or resolved.name, resolved))
    return out


def build_server(models: list[str] | None = None, config: ServerConfig | None = None,
                 session_config: SessionConfig | None = None, engine: str = "auto", threads: int | None = None,
                 codec_weights: str | None = None, adapters: list[str] | None = None,
                 announce: Callable[[str], None] | None = None) -> RealtimeServer:
    """Resolve the models (loading the default now, the others on first use) and build the server."""
    config = config or ServerConfig()
    check_bind(config.host, config.token)
    registry = ModelRegistry(engine=engine, threads=threads, codec_weights=codec_weights,
                             session_config=session_config)
    adapter_map: dict[str, Path] = {}
    for item in adapters or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--adapter {item!r} must look like NAME=DIR.")
        if not Path(path).is_dir():
            raise FileNotFoundError(f"Adapter directory {path} does not exist.")
        adapter_map[name] = Path(path)
    for name, path in parse_model_args(models, announce):
        registry.add_dir(name, path, adapters=adapter_map)
    registry.get(registry.default)  # fail now, not on the first connection
    return RealtimeServer(registry, config)


def serve(server: RealtimeServer, app=None, announce: Callable[[str], None] | None = None) -> None:
    """Run until interrupted."""
    import uvicorn

    cfg = server.config
    app = app or create_app(server)
    if announce:
        auth = "token required" if cfg.token else "no auth (loopback only)"
        announce(f"serving {', '.join(server.registry.names)} on ws://{cfg.host}:{cfg.port}{REALTIME_PATH} ({auth})")
    uvicorn.Server(uvicorn_config(app, cfg.host, cfg.port, cfg)).run()
