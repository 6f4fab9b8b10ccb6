"""An agent child process and the request/reply channel to it (:mod:`nex.agent.protocol`).

Requests are matched to replies by ``seq`` in a plain dict: everything runs on the
event loop, so no lock is needed. When the process ends, every waiting request
fails with :class:`AgentExited`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
from typing import Sequence

from nex.agent import protocol
from nex.procutil import new_group_dying_with_parent

log = logging.getLogger(__name__)


class AgentExited(Exception):
    """The agent process ended (or was never ready)."""

    def __init__(self, returncode: int | None) -> None:
        super().__init__(describe_exit(returncode))
        self.returncode = returncode


class AgentStartError(Exception):
    """The agent did not become ready."""


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "agent exited"
    if returncode < 0:
        try:
            return f"agent exited on signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"agent exited on signal {-returncode}"
    return f"agent exited with code {returncode}"


class AgentProcess:
    """A started agent; use :meth:`start`."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        loop = asyncio.get_running_loop()
        self.name = name
        self._process = process
        self._seq = itertools.count(1)
        self._pending: dict[int, asyncio.Future[protocol.Reply]] = {}
        self._ready: asyncio.Future[None] = loop.create_future()
        self._exited: asyncio.Future[int] = loop.create_future()
        self._reading = asyncio.create_task(self._read_replies(), name=f"{name} replies")
        self._forwarding = asyncio.create_task(self._forward_stderr(), name=f"{name} stderr")

    @classmethod
    async def start(cls, argv: Sequence[str], env: dict[str, str], *, name: str,
                    ready_timeout: float) -> AgentProcess:
        """Start the process and return once it said ready; otherwise kill it and raise."""
        # Its own process group: signals meant for the node's group (Ctrl-C, a service
        # manager's SIGTERM) reach the node, which then unloads the functions in order.
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, preexec_fn=new_group_dying_with_parent,
            limit=protocol.MAX_LINE_BYTES,
        )
        agent = cls(process, name)
        ready = False
        try:
            await asyncio.wait({agent._ready, agent._exited}, timeout=ready_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            if agent._exited.done():
                raise AgentStartError(f"{name}: {describe_exit(agent._exited.result())} before it was ready")
            if not agent._ready.done():
                raise AgentStartError(f"{name} was not ready within {ready_timeout:.0f}s")
            ready = True
        finally:
            if not ready:
                await agent.stop(grace=1.0)
        return agent

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """None while the agent runs (and until its replies have all been read)."""
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    async def request(self, request: protocol.Load | protocol.Unload | protocol.Stats) -> protocol.Reply:
        """Send one request and wait for its reply; raises AgentExited if the agent ends first."""
        if self._exited.done():
            raise AgentExited(self._exited.result())
        seq = next(self._seq)
        reply: asyncio.Future[protocol.Reply] = asyncio.get_running_loop().create_future()
        self._pending[seq] = reply
        try:
            stdin = self._process.stdin
            assert stdin is not None
            stdin.write(protocol.encode(request.model_copy(update={"seq": seq})))
            await stdin.drain()
            return await reply
        except (BrokenPipeError, ConnectionResetError):
            raise AgentExited(await self.wait()) from None
        finally:
            self._pending.pop(seq, None)

    async def stop(self, grace: float) -> int:
        """Close stdin (the agent exits on EOF), then SIGTERM, then SIGKILL, ``grace`` seconds apart."""
        stdin = self._process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                return await asyncio.wait_for(self.wait(), grace)
            except asyncio.TimeoutError:
                if self._process.returncode is None:
                    log.warning("%s (pid %d) still runs after %.1fs: sending %s", self.name, self.pid, grace, sig.name)
                    self._process.send_signal(sig)
        return await self.wait()

    async def _read_replies(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        try:
            while line := await stdout.readline():
                self._dispatch(line)
        except ValueError as exc:  # a line over the limit: the channel is unusable
            log.error("%s: %s; killing it", self.name, exc)
            self._process.kill()
        finally:
            returncode = await self._process.wait()
            for reply in self._pending.values():
                if not reply.done():
                    reply.set_exception(AgentExited(returncode))
            self._exited.set_result(returncode)

    def _dispatch(self, line: bytes) -> None:
        try:
            message = protocol.decode_agent_message(line)
        except protocol.ProtocolError as exc:
            log.warning("%s: %s", self.name, exc)
            return
        if isinstance(message, protocol.Ready):
            if not self._ready.done():
                self._ready.set_result(None)
            return
        reply = self._pending.get(message.seq)
        if reply is not None and not reply.done():
            reply.set_result(message)

    async def _forward_stderr(self) -> None:
        stderr = self._process.stderr
        assert stderr is not None
        while True:
            try:
                line = await stderr.readline()
            except ValueError:
                continue  # an overlong line; the rest of it is dropped
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            level = logging.getLevelName(text.split(" ", 1)[0])
            log.log(level if isinstance(level, int) else logging.INFO, "%s[%d] %s", self.name, self.pid, text)
