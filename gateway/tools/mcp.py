"""MCP servers as tool sources: each configured server's tools, offered as ``<prefix><tool name>``.

One ``McpSource`` per server owns its connection in a long-lived task, because the
SDK's transports and sessions are anyio context managers that must be entered and
left in the same task. Calls come from request tasks and share the session (the SDK
matches responses to requests by id). The task reconnects with backoff when the
connection ends, and re-lists the server's tools after every (re)connection and on
``notifications/tools/list_changed``, updating the registry.

A connection is judged lost when a stdio server's process exits (its stdout closes),
when an HTTP server leaves a ping unanswered (one every ``ping_interval_s``, which must
answer within that time), when the server's change subscription drops (2026-era
servers), when a call fails with ``CONNECTION_CLOSED``, or when the transport fails. From that moment
its tools are no longer offered and a call to one fails at once; they are offered
again when the task has reconnected and re-listed them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import time
from collections.abc import Iterable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import mcp.types as mcp_types
import orjson
from jsonschema import SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import Draft202012Validator, validator_for
from mcp import Client, MCPError, StdioServerParameters
from mcp.client import Transport
from mcp.client.session import IncomingMessage
from mcp.client.subscriptions import Subscription, SubscriptionLost
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from gateway import __version__, metrics
from gateway.config import McpServerConfig
from gateway.tools.base import InvalidArguments, Tool, ToolContext, ToolFailed
from gateway.tools.mcp_transports import http_transport, stdio_transport
from gateway.tools.registry import SkippedTool, ToolLoadError, ToolRegistry

log = logging.getLogger("gateway.tools.mcp")

OK = "ok"
UNAVAILABLE = "unavailable"

STARTUP_WAIT_S = 10.0
"""How long start-up waits for the first connection attempts; a slower server joins later."""
BACKOFF_INITIAL_S = 0.25
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 10.0
"""A connection that lasted this long resets the backoff; one that dies sooner keeps it growing."""
CLOSE_WAIT_S = 10.0
END_WAIT_S = 5.0
"""How long ending a lost session may take (an HTTP DELETE to a hung server) before it is abandoned."""
MAX_LIST_PAGES = 100
MAX_REPORTED_ERRORS = 5

# OpenAI function names: letters, digits, underscore and dash, at most 64 characters.
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class UnusableTool(Exception):
    """A tool listed by an MCP server cannot be offered (bad schema or name, or it needs a feature the
    gateway lacks); it is skipped."""


def function_name(prefix: str, remote_name: str) -> str:
    """The prefixed name, with characters OpenAI rejects in function names replaced by ``_``."""
    name = f"{prefix}{remote_name}"
    if _FUNCTION_NAME.match(name):
        return name
    return _NAME_UNSAFE.sub("_", name)[:64]


def _byte_count(data: str) -> int:
    """Decoded size of base64 text, without decoding it."""
    return max(0, len(data) * 3 // 4 - len(data) + len(data.rstrip("=")))


def _describe(block: mcp_types.ContentBlock) -> str:
    """A content block as text the model can read; binary payloads are described, never inlined."""
    if isinstance(block, mcp_types.TextContent):
        return block.text
    if isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
        return f"[{block.type}: {block.mime_type}, {_byte_count(block.data)} bytes]"
    if isinstance(block, mcp_types.ResourceLink):
        facts = [block.uri, block.name]
        if block.mime_type:
            facts.append(block.mime_type)
        if block.size is not None:
            facts.append(f"{block.size} bytes")
        return f"[resource link: {', '.join(facts)}]"
    if isinstance(block, mcp_types.EmbeddedResource):
        resource = block.resource
        facts = [resource.uri, resource.mime_type or "unknown type"]
        if isinstance(resource, mcp_types.TextResourceContents):
            facts.append(f"{len(resource.text)} characters")
        else:
            facts.append(f"{_byte_count(resource.blob)} bytes")
        return f"[embedded resource: {', '.join(facts)}]"
    return f"[{getattr(block, 'type', type(block).__name__)} content]"


def _repeats(block: mcp_types.ContentBlock, structured: Any) -> bool:
    if not isinstance(block, mcp_types.TextContent):
        return False
    try:
        return bool(json.loads(block.text) == structured)
    except ValueError:
        return False


def render_content(result: mcp_types.CallToolResult) -> str:
    """Text blocks as text, structured content as JSON, other blocks described."""
    parts: list[str] = []
    blocks: Iterable[mcp_types.ContentBlock] = result.content
    if result.structured_content is not None:
        parts.append(orjson.dumps(result.structured_content, option=orjson.OPT_NON_STR_KEYS, default=str).decode())
        # Servers repeat structured content as a JSON text block for older clients; one copy is enough.
        blocks = [b for b in blocks if not _repeats(b, result.structured_content)]
    parts.extend(_describe(block) for block in blocks)
    return "\n".join(parts)


class McpTool(Tool):
    """One tool of an MCP server; arguments are checked against its input schema before the call."""

    def __init__(self, server: McpSource, remote: mcp_types.Tool) -> None:
        if remote.execution is not None and remote.execution.task_support == "required":
            # The gateway calls tools and waits for the result; it does not run MCP tasks (2025-11-25).
            raise UnusableTool("it requires task-augmented execution (execution.taskSupport), which the gateway lacks")
        schema = remote.input_schema
        validator_class = validator_for(schema, default=Draft202012Validator)
        try:
            validator_class.check_schema(schema)
        except SchemaError as exc:
            raise UnusableTool(f"its input schema is invalid: {exc.message}") from exc
        self.name = function_name(server.config.tool_prefix, remote.name)
        if not _FUNCTION_NAME.match(self.name):
            raise UnusableTool(f"{self.name!r} is not a usable function name")
        self.remote_name = remote.name
        self.description = remote.description or remote.title or ""
        self.parameters = schema
        self.timeout_s = server.config.timeout_s
        self.source = f"mcp:{server.name}"
        self.server = server
        self._validator: Validator = validator_class(schema)

    @property
    def available(self) -> bool:
        """Offered only while its server is connected."""
        return self.server.up

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        errors = sorted(self._validator.iter_errors(arguments), key=lambda e: [str(p) for p in e.absolute_path])
        if errors:
            shown = [f"{e.json_path}: {e.message[:200]}" for e in errors[:MAX_REPORTED_ERRORS]]
            if len(errors) > MAX_REPORTED_ERRORS:
                shown.append(f"and {len(errors) - MAX_REPORTED_ERRORS} more")
            raise InvalidArguments("; ".join(shown))
        return arguments

    async def invoke(self, validated: dict[str, Any], context: ToolContext) -> str:
        result = await self.server.call(self.remote_name, validated)
        text = render_content(result)
        if result.is_error:
            raise ToolFailed(text or f"{self.name} reported an error without details.")
        return text


def _reason(exc: BaseException) -> str:
    """The innermost cause worth logging; task groups wrap transport errors in exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class McpSource:
    """One MCP server: its connection task, its tools in the registry, and its readiness."""

    def __init__(
        self, config: McpServerConfig, registry: ToolRegistry, known_names: set[str], status: dict[str, str]
    ) -> None:
        self.config = config
        self.name = config.name
        self.registry = registry
        self.known_names = known_names
        self.status = status
        self.status[self.name] = UNAVAILABLE
        self.since = time.time()
        """When the server last came up or went down (start-up counts as down)."""
        metrics.MCP_SERVER_UP.labels(self.name).set(0)
        self.tools: dict[str, McpTool] = {}
        self.last_error: str | None = None
        self._client: Client | None = None
        # Calls awaiting an answer: a server busy with them may be slow to answer a ping, not lost.
        self._calls_in_flight = 0
        self._up = asyncio.Event()
        self._closing = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._wake = asyncio.Event()
        self._lost: str | None = None
        self._ending = False
        self._refresh_due = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mcp:{self.name}")

    async def wait_first_attempt(self) -> None:
        await self._first_attempt.wait()

    async def close(self) -> None:
        """End the connection cleanly (the SDK stops a stdio server: stdin closed, then signals)."""
        self._closing.set()
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), CLOSE_WAIT_S)
        except TimeoutError:
            log.warning("MCP server %s did not close within %s s", self.name, CLOSE_WAIT_S)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def up(self) -> bool:
        """Connected with its tools listed: they are offered, and calls go through."""
        return self._up.is_set()

    async def call(self, tool_name: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        client = self._client
        if client is None or not self._up.is_set():
            # A request offered the tool before the server was lost; waiting for a reconnection would stall it.
            reason = self._lost or self.last_error
            detail = f" ({reason})" if reason else ""
            raise ToolFailed(
                f"MCP server {self.name!r} is unavailable{detail}; its tools are withdrawn until it reconnects."
            )
        self._calls_in_flight += 1
        try:
            return await client.call_tool(tool_name, arguments)
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED or self._client is not client:
                self._lose(client, "the connection closed during a call")
                raise ToolFailed(
                    f"The connection to MCP server {self.name!r} was lost during the call; it is being re-established."
                ) from exc
            raise ToolFailed(f"MCP server {self.name!r} answered with an error: {exc}") from exc
        except Exception as exc:
            if self._client is not client:
                raise ToolFailed(f"The connection to MCP server {self.name!r} was lost during the call.") from exc
            raise
        finally:
            self._calls_in_flight -= 1

    def _lose(self, client: Client | None, reason: str) -> None:
        """Judge ``client``'s connection lost (None: the current one) and wake the task to end it.

        The tools are withdrawn and the status changes now, not once the session is torn down.
        """
        if (client is None or self._client is client) and self._lost is None:
            self._lost = reason
            was_up = self._up.is_set()
            self._mark_down()
            self._wake.set()
            if was_up and not self._closing.is_set():
                # Logged now: ending the session may take a while (END_WAIT_S) on a server that stopped answering.
                self._log_loss("disconnected", reason, None)

    def _transport_ended(self, reason: str) -> None:
        if not self._ending:
            self._lose(None, reason)

    def _backoff(self, failures: int) -> float:
        return min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2.0 ** (failures - 1)) * random.uniform(0.5, 1.0)

    async def _run(self) -> None:
        failures = 0
        while not self._closing.is_set():
            if failures:
                try:
                    await asyncio.wait_for(self._closing.wait(), self._backoff(failures))
                    break
                except TimeoutError:
                    pass
            started = time.monotonic()
            connected = False
            try:
                connected = await self._connection()
            except Exception as exc:
                # A stdio server that exits while connecting fails the connect with "connection closed".
                self.last_error = self._lost or _reason(exc)
            finally:
                self._mark_down()
                self._first_attempt.set()
            if self._closing.is_set():
                break
            stable = connected and time.monotonic() - started >= STABLE_AFTER_S
            failures = 1 if stable else failures + 1
            if not (connected and self._lost is not None):  # else logged when it was lost
                self._log_loss("disconnected" if connected else "is unavailable", self.last_error, failures)

    def _log_loss(self, what: str, reason: str | None, attempt: int | None) -> None:
        extra = {"event": "mcp_disconnected", "mcp_server": self.name, "attempt": attempt}
        log.warning("MCP server %s %s: %s", self.name, what, reason, extra=extra)

    def _new_client(self) -> Client:
        server: Transport
        if self.config.command is not None:
            params = StdioServerParameters(
                command=self.config.command, args=self.config.args, env=self.config.env or None, cwd=self.config.cwd
            )
            server = stdio_transport(params, self.name, lambda: self._transport_ended("the server process exited"))
        else:
            assert self.config.url is not None
            server = http_transport(
                self.config.url,
                self.config.headers,
                self.config.timeout_s,
                lambda: self._transport_ended("the HTTP transport closed"),
            )
        return Client(
            server,
            message_handler=self._on_message,
            client_info=mcp_types.Implementation(name="llm-tool-gateway", version=__version__),
            # Listings must be fresh after list_changed; the SDK would honour server cache hints.
            cache=None,
        )

    async def _connection(self) -> bool:
        """One connection from connect to end; True when it got as far as offering tools."""
        self._lost = None
        self._ending = False
        self._refresh_due = False
        self._wake.clear()
        connected = ending = False
        # One cancel scope spans the whole session so it nests with the SDK's own scopes;
        # its deadline bounds connecting, each listing and the teardown, and is lifted in between.
        with anyio.CancelScope() as deadline:
            deadline.deadline = anyio.current_time() + self.config.timeout_s
            async with self._new_client() as client, AsyncExitStack() as stack:
                try:
                    changes = await self._subscribe(client, stack)
                    await self._sync_tools(client)
                    deadline.deadline = math.inf
                    self._mark_up(client)
                    connected = True
                    await self._serve(client, changes, deadline)
                finally:
                    # Ended on purpose from here, so the transport closing is no news; and ending an HTTP
                    # session sends a DELETE, which a server that stopped answering would hold.
                    self._ending = True
                    if not deadline.cancel_called:
                        ending = True
                        deadline.deadline = anyio.current_time() + END_WAIT_S
        if deadline.cancelled_caught and not ending:
            raise TimeoutError(f"no answer within {self.config.timeout_s:g} s")
        if self._lost is not None:
            self.last_error = self._lost
        return connected

    async def _subscribe(self, client: Client, stack: AsyncExitStack) -> Subscription | None:
        """Open the change subscription 2026-era servers need; older servers notify unasked."""
        tools = client.server_capabilities.tools
        if client.protocol_version not in MODERN_PROTOCOL_VERSIONS or tools is None or not tools.list_changed:
            return None
        try:
            return await stack.enter_async_context(client.listen(tools_list_changed=True))
        except MCPError as exc:
            log.info("MCP server %s refused a change subscription: %s", self.name, exc)
            return None

    async def _serve(self, client: Client, changes: Subscription | None, deadline: anyio.CancelScope) -> None:
        async with anyio.create_task_group() as tasks:
            if changes is not None:
                tasks.start_soon(self._follow, client, changes)
            if self.config.url is not None:
                tasks.start_soon(self._ping, client)
            while not self._closing.is_set() and self._lost is None:
                if self._refresh_due:
                    self._refresh_due = False
                    deadline.deadline = anyio.current_time() + self.config.timeout_s
                    await self._sync_tools(client)
                    deadline.deadline = math.inf
                    continue
                await self._wake.wait()
                self._wake.clear()
            tasks.cancel_scope.cancel()

    async def _follow(self, client: Client, changes: Subscription) -> None:
        # Events also reach the message handler, which schedules the refresh; this loop
        # only notices the stream ending, which is how a dead server shows itself first.
        try:
            async for _event in changes:
                pass
            self._lose(client, "the server ended its change subscription")
        except SubscriptionLost:
            self._lose(client, "the connection was lost")

    async def _ping(self, client: Client) -> None:
        """Every ``ping_interval_s``, a request the server must answer within that time (or ``timeout_s``).

        An HTTP server can vanish without closing anything the session waits on (a
        handshake-era server has no subscription; a hung or unreachable one closes no
        socket), so only asking shows it. Any answer counts, even "method not found".
        A stdio server needs none of this: its exit closes its stdout at once.
        """
        interval = self.config.ping_interval_s
        limit = min(interval, self.config.timeout_s)
        modern = client.protocol_version in MODERN_PROTOCOL_VERSIONS
        while True:
            await anyio.sleep(interval)
            try:
                with anyio.fail_after(limit):
                    if modern:
                        # 2026-07-28 removed ping; discover is the cheapest request every modern server answers.
                        await client.session.send_discover(client.protocol_version)
                    else:
                        await client.session.send_ping()
                continue
            except MCPError as exc:
                if exc.code == mcp_types.METHOD_NOT_FOUND:
                    continue
                reason = f"a ping failed: {exc}"
            except TimeoutError:
                if self._calls_in_flight:
                    # Many servers run a synchronous tool on their one event loop, so a long call holds up the
                    # ping's answer; the calls are bounded by timeout_s themselves, and the next idle ping decides.
                    continue
                reason = f"no answer to a ping within {limit:g} s"
            except Exception as exc:
                reason = f"a ping failed: {_reason(exc)}"
            self._lose(client, reason)
            return

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self._refresh_due = True
            self._wake.set()
        elif isinstance(message, Exception):
            log.warning("MCP server %s transport error: %s", self.name, _reason(message))

    async def _sync_tools(self, client: Client) -> None:
        listed: list[mcp_types.Tool] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = await client.list_tools(cursor=cursor)
            listed.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        self._publish(listed)

    def _publish(self, listed: list[mcp_types.Tool]) -> None:
        """Replace this server's tools in the registry with the listed ones (allowlist applied)."""
        allow = self.config.allow
        offered: dict[str, McpTool] = {}
        skipped: list[SkippedTool] = []
        for remote in listed:
            if allow is not None and remote.name not in allow:
                continue
            try:
                tool = McpTool(self, remote)
            except UnusableTool as exc:
                skipped.append(self._skip(remote.name, str(exc)))
                continue
            if tool.name in offered:
                skipped.append(self._skip(remote.name, f"{tool.name!r} is taken"))
                continue
            offered[tool.name] = tool
        if allow is not None:
            missing = sorted(set(allow) - {r.name for r in listed})
            if missing:
                log.warning("MCP server %s does not offer allowed tools: %s", self.name, ", ".join(missing))
            absent = "in the server's allow list, but the server does not offer it"
            skipped.extend(SkippedTool(f"mcp:{self.name}", name, absent) for name in missing)
        self.registry.remove(self.tools)
        self.tools = {}
        for name, tool in offered.items():
            try:
                self.registry.add([tool])
            except ToolLoadError as exc:
                skipped.append(self._skip(tool.remote_name, str(exc)))
                continue
            self.tools[name] = tool
            self.known_names.add(name)
        self.registry.report_skipped(f"mcp:{self.name}", skipped)
        log.info(
            "MCP server %s offers %d tools",
            self.name,
            len(self.tools),
            extra={"event": "mcp_tools", "mcp_server": self.name, "tools": sorted(self.tools)},
        )

    def _skip(self, remote_name: str, reason: str) -> SkippedTool:
        log.warning("MCP server %s: tool %r skipped: %s", self.name, remote_name, reason)
        return SkippedTool(f"mcp:{self.name}", remote_name, reason)

    def _mark_up(self, client: Client) -> None:
        self._client = client
        self.last_error = None
        self._up.set()
        self._set_status(OK)
        self._first_attempt.set()
        log.info("MCP server %s connected", self.name, extra={"event": "mcp_connected", "mcp_server": self.name})

    def _mark_down(self) -> None:
        self._client = None
        self._up.clear()
        self._set_status(UNAVAILABLE)

    def _set_status(self, status: str) -> None:
        if self.status[self.name] != status:
            self.since = time.time()
        self.status[self.name] = status
        metrics.MCP_SERVER_UP.labels(self.name).set(1 if status == OK else 0)

    def detail(self) -> dict[str, Any]:
        """What ``/readyz`` shows about this server."""
        entry: dict[str, Any] = {
            "status": self.status[self.name],
            "since": int(self.since),
            "tools": len(self.tools) if self.up else 0,
        }
        reason = self._lost or self.last_error
        if self.status[self.name] != OK and reason:
            entry["error"] = reason
        return entry


class McpSources:
    """All configured MCP servers; ``status`` maps each name to ``ok`` or ``unavailable``."""

    def __init__(
        self, configs: Iterable[McpServerConfig], registry: ToolRegistry, known_names: set[str] | None = None
    ) -> None:
        self.status: dict[str, str] = {}
        names = known_names if known_names is not None else set()
        self.sources = [McpSource(config, registry, names, self.status) for config in configs]

    async def start(self, wait_s: float = STARTUP_WAIT_S) -> None:
        """Connect every server concurrently; return once each has tried once, or after ``wait_s``."""
        for source in self.sources:
            source.start()
        if not self.sources:
            return
        try:
            async with asyncio.timeout(wait_s):
                await asyncio.gather(*(s.wait_first_attempt() for s in self.sources))
        except TimeoutError:
            slow = [s.name for s in self.sources if s.status[s.name] != OK]
            log.warning("MCP servers still connecting after %s s: %s", wait_s, ", ".join(slow))

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.sources))

    def unavailable(self) -> dict[str, str | None]:
        """Servers not connected, with the last error seen for each."""
        return {s.name: s.last_error for s in self.sources if self.status[s.name] != OK}

    def detail(self) -> dict[str, dict[str, Any]]:
        """Each server's status, since when, how many tools it offers, and why it is down."""
        return {s.name: s.detail() for s in self.sources}
