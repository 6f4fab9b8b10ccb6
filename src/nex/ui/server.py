"""The dashboard's HTTP server (aiohttp): the page, its JSON API and its SSE streams.

| route | what |
|---|---|
| ``GET /`` | the page (``static/index.html``; its JS and CSS under ``/static/``) |
| ``GET /api/fleet`` | nodes, workloads, recent events and rates, as JSON |
| ``GET /api/stream`` | SSE: ``fleet``, ``events`` (on connect), ``event``, ``rates`` |
| ``GET /api/logs/<ns>/<workload>`` | SSE: ``line`` for each log line (history, then live), ``failure`` |
| ``POST /api/deploy`` | multipart: ``file``, ``type``, ``name``, ``trigger``, ``argv``, ``namespace`` |
| ``POST /api/workloads/<ns>/<workload>/stop`` | undeploy |
| ``POST /api/nodes/<node>/lameduck`` | lame duck |

There is no login: whoever reaches the port controls the fleet (docs/dashboard.md).
Two cheap guards keep another web site the user visits from using it: a POST must
carry the ``X-Nex-Dashboard`` header (a cross-site form cannot set one, and the
server answers no CORS preflight), and on a loopback address the ``Host`` header must
name loopback (against DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from contextlib import aclosing
from importlib import resources
from pathlib import Path
from typing import Awaitable, Callable

import nats.errors
from aiohttp import web

from nex.api import subjects
from nex.api.errors import BadRequest, Forbidden, NexError
from nex.client import NexClient
from nex.ui import actions, sse
from nex.ui.fleet import DEFAULT_REFRESH_S, FleetWatcher

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8223  # next to 8222, which nats-server monitoring takes
ACTION_HEADER = "X-Nex-Dashboard"
HEARTBEAT_S = 15.0
STATIC = Path(str(resources.files("nex.ui") / "static"))

_WATCHER = web.AppKey("watcher", FleetWatcher)
_STREAMS = web.AppKey("streams", set)
_SETTINGS = web.AppKey("settings", dict)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Dashboard:
    """``nex ui`` in-process: start it on a host and port (0: any free one), stop it."""

    def __init__(self, clients: list[NexClient], refresh_s: float = DEFAULT_REFRESH_S,
                 max_upload_mib: int = actions.DEFAULT_MAX_UPLOAD_MIB) -> None:
        self.broadcaster = sse.Broadcaster()
        self.watcher = FleetWatcher(clients, self.broadcaster, refresh_s=refresh_s)
        self.app = build_app(self.watcher, max_upload_bytes=max_upload_mib * 1024 * 1024)
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    async def start(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
        """Serve; returns the page's URL once the port listens."""
        self.app[_SETTINGS]["loopback"] = _is_loopback(host)
        await self.watcher.start()
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
        bound = self._runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.url = f"http://{shown}:{bound[1]}/"
        return self.url

    async def stop(self) -> None:
        """Ends the streams, closes the port, stops watching; twice is harmless. Bounded: a
        stream stuck on a connection that went silent does not hold the command's exit."""
        self.broadcaster.close()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                if self._runner is not None:
                    runner, self._runner = self._runner, None
                    await runner.cleanup()
                await self.watcher.stop()
        except TimeoutError:
            log.warning("the dashboard did not stop within %gs: leaving the rest to the exit", STOP_TIMEOUT_S)


def build_app(watcher: FleetWatcher, max_upload_bytes: int) -> web.Application:
    app = web.Application(client_max_size=max_upload_bytes + 64 * 1024, middlewares=[_errors, _guard])
    app[_WATCHER] = watcher
    app[_STREAMS] = set()
    app[_SETTINGS] = {"loopback": True, "max_upload_bytes": max_upload_bytes}
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/api/fleet", _fleet)
    app.router.add_get("/api/stream", _stream)
    app.router.add_get("/api/logs/{namespace}/{workload_id}", _logs)
    app.router.add_post("/api/deploy", _deploy)
    app.router.add_post("/api/workloads/{namespace}/{workload_id}/stop", _stop)
    app.router.add_post("/api/nodes/{node_id}/lameduck", _lameduck)
    app.on_shutdown.append(_end_streams)
    app.on_response_prepare.append(_harden)
    return app


# -- middlewares ---------------------------------------------------------------------


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A NexError becomes ``{"error": {"code", "message"}}`` with that HTTP status: the one place."""
    try:
        return await handler(request)
    except NexError as exc:
        status = exc.code if 400 <= exc.code <= 599 else 500
        return web.json_response(exc.body(), status=status)


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.app[_SETTINGS]["loopback"] and not _loopback_host(request.host):
        raise Forbidden(f"this dashboard answers on a loopback address only, not as {request.host!r}")
    if request.method not in ("GET", "HEAD") and request.headers.get(ACTION_HEADER) != "1":
        raise Forbidden(f"an action needs the {ACTION_HEADER} header (the dashboard page sends it)")
    return await handler(request)


# -- the page and the read side -------------------------------------------------------


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def _fleet(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[_WATCHER].snapshot())


async def _stream(request: web.Request) -> web.StreamResponse:
    watcher = request.app[_WATCHER]
    response = await _open_sse(request)
    subscriber = watcher.broadcaster.subscribe(*watcher.opening())
    try:
        while True:
            try:
                message = await asyncio.wait_for(subscriber.next(), HEARTBEAT_S)
            except asyncio.TimeoutError:
                message = sse.comment("heartbeat")
            if message is None:
                break
            await response.write(message)
    except ConnectionResetError:
        pass  # the page went away
    finally:
        watcher.broadcaster.unsubscribe(subscriber)
    return response


async def _logs(request: web.Request) -> web.StreamResponse:
    client = request.app[_WATCHER].client_for(request.match_info["namespace"])
    workload_id = request.match_info["workload_id"]
    if not subjects.is_token(workload_id):
        raise BadRequest(f"invalid workload id {workload_id!r}")
    lines = client.logs(workload_id, follow=True)
    response = await _open_sse(request)
    task = asyncio.current_task()
    streams = request.app[_STREAMS]
    streams.add(task)
    try:
        async with aclosing(lines):
            async for line in lines:
                await response.write(sse.encode("line", {
                    "stream": line.stream, "text": line.text, "time": line.time.isoformat()}))
    except NexError as exc:
        await _write_quietly(response, sse.encode("failure", exc.body()["error"]))
    except nats.errors.Error as exc:  # the connection to NATS failed under the stream
        await _write_quietly(response, sse.encode("failure", {"code": 503, "message": f"NATS: {exc}"}))
    except ConnectionResetError:
        pass  # the page went away
    finally:
        streams.discard(task)
    return response


async def _open_sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    return response


async def _write_quietly(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionResetError:
        pass


# The page loads nothing but its own files, and no other site may frame it (a framed
# page could trick a user into confirming an action).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def _harden(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


async def _end_streams(app: web.Application) -> None:
    for task in list(app[_STREAMS]):
        task.cancel()


# -- actions ----------------------------------------------------------------------------


async def _deploy(request: web.Request) -> web.StreamResponse:
    watcher = request.app[_WATCHER]
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("send the deploy form as multipart/form-data")
    with actions.upload_directory() as directory:
        form = await actions.read_deploy_form(
            await request.multipart(), Path(directory), watcher.primary.namespace,
            request.app[_SETTINGS]["max_upload_bytes"])
        summary = await actions.deploy(watcher, form)
    await watcher.refreshed(timeout=2.0)
    return web.json_response(summary.model_dump(mode="json", exclude={"env_keys"}), status=201)


async def _stop(request: web.Request) -> web.StreamResponse:
    watcher = request.app[_WATCHER]
    result = await actions.stop(watcher, request.match_info["namespace"], request.match_info["workload_id"])
    await watcher.refreshed(timeout=2.0)
    return web.json_response(result)


async def _lameduck(request: web.Request) -> web.StreamResponse:
    watcher = request.app[_WATCHER]
    result = await actions.lameduck(watcher, request.match_info["node_id"])
    await watcher.refreshed(timeout=2.0)
    return web.json_response(result)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_host(host_header: str) -> bool:
    """``127.0.0.1:8222``, ``localhost``, ``[::1]:8222``: the Host header names loopback."""
    host = host_header
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return _is_loopback(host)


def exposed(host: str) -> bool:
    """Whether ``host`` makes the dashboard reachable from other machines."""
    return not _is_loopback(host)


__all__ = ["ACTION_HEADER", "DEFAULT_HOST", "DEFAULT_PORT", "Dashboard", "build_app", "exposed"]
