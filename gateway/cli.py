"""The ``gateway`` command: serve, check-config, tools list."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import orjson
import yaml

from gateway.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    GatewayConfig,
    exposure_problem,
    is_pattern,
    load_config,
    masked,
)
from gateway.policy import KeyPolicy
from gateway.tools.registry import ToolLoadError, ToolRegistry


def _config_path(value: str | None) -> str:
    return value or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG_PATH


def _load(path: str) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(1) from exc


def app_from_env() -> object:
    """App factory for uvicorn workers: each worker reads the config named by $GATEWAY_CONFIG."""
    from gateway.app import create_app
    from gateway.logs import configure_logging

    config = load_config(os.environ["GATEWAY_CONFIG"])
    configure_logging(config.logging.level, config.logging.format)
    return create_app(config, base_dir=Path.cwd())


def serve(args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from gateway.app import create_app
    from gateway.connections import GatewayServerConfig, limits_from
    from gateway.logs import configure_logging

    path = _config_path(args.config)
    config = _load(path)
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    workers = args.workers or config.server.workers
    configure_logging(config.logging.level, config.logging.format)
    exposed = exposure_problem(host, config.server, config.auth)
    if exposed is not None:
        print(f"error: --host {host}: {exposed}", file=sys.stderr)
        return 1
    if workers > 1 and config.state.backend == "memory":
        print(
            f"error: {workers} workers need shared state: with state.backend 'memory' each worker keeps its own "
            "mixed-turn continuations, and a follow-up landing on another worker loses its turn. "
            "Set state.backend: redis (and state.redis_url).",
            file=sys.stderr,
        )
        return 1
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": None,
        "access_log": False,
        # No WebSocket route: uvicorn need not load its WebSocket stack at start-up.
        "ws": "none",
        # In-flight requests and streams get this long to finish after SIGTERM.
        "timeout_graceful_shutdown": config.server.shutdown_grace_s,
    }
    limits = limits_from(config.server)
    try:
        if workers == 1:
            server = uvicorn.Server(GatewayServerConfig(create_app(config, base_dir=Path.cwd()), limits, **options))
            server.run()
            return 0 if server.started else 1
        # Workers are separate processes: metrics go through prometheus-client's
        # multiprocess files, which must be configured before any worker starts.
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
        # abspath, not resolve(): relative paths in the config stay relative to the folder it is mounted in.
        os.environ["GATEWAY_CONFIG"] = os.path.abspath(path)
        create_app(config, base_dir=Path.cwd())  # fail fast on broken tools, before forking workers
        server_config = GatewayServerConfig(
            "gateway.cli:app_from_env", limits, factory=True, workers=workers, **options
        )
        Multiprocess(server_config, sockets=[server_config.bind_socket()]).run()
    except ToolLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def policy_problems(config: GatewayConfig, tool_names: list[str]) -> list[str]:
    """Key patterns that can match nothing: a model no upstream serves, a tool nothing provides.

    With a ``*`` upstream any model name may exist, so model patterns are checked only
    against literal names when no upstream takes every model. MCP tools are known
    only once connected, so a pattern under an MCP server's prefix counts as matching.
    """
    # A key pattern may match what an upstream's own pattern admits (its listed models): not checked here.
    wildcard = any(u.patterns for u in config.upstreams)
    models = [m for u in config.upstreams for m in (*u.models, *u.model_map) if not is_pattern(m)]
    prefixes = [s.tool_prefix for s in config.tools.mcp_servers]
    problems = []
    for key in config.auth.api_keys:
        policy = KeyPolicy.from_config(key)
        for pattern in key.models:
            if not wildcard and not any(fnmatchcase(m, pattern) for m in models):
                problems.append(f"auth.api_keys.{key.name}.models: {pattern!r} matches no configured model")
        for pattern in key.tools:
            known = any(fnmatchcase(t, pattern) for t in tool_names) or any(
                p and (pattern.startswith(p) or fnmatchcase(p, pattern)) for p in prefixes
            )
            if pattern != "*" and not known:
                problems.append(f"auth.api_keys.{policy.name}.tools: {pattern!r} matches no loaded tool")
    return problems


def path_problems(config: GatewayConfig) -> list[str]:
    """Paths the config names that are not there; tool paths are checked by loading them."""
    return [
        f"tools.mcp_servers.{server.name}.cwd: {server.cwd}: no such directory"
        for server in config.tools.mcp_servers
        if server.cwd is not None and not Path(server.cwd).is_dir()
    ]


def check_config(args: argparse.Namespace) -> int:
    config = _load(_config_path(args.config))
    try:
        registry = ToolRegistry.from_config(config.tools, base_dir=Path.cwd())
    except ToolLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    problems = path_problems(config) + policy_problems(config, registry.names())
    registry.close()
    sys.stdout.write(yaml.safe_dump(masked(config), sort_keys=False))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


async def _list_mcp_tools(config: GatewayConfig, registry: ToolRegistry) -> dict[str, str | None]:
    """Connect to every MCP server once to list its tools; return the ones that could not be reached."""
    from gateway.tools.mcp import McpSources

    # Each failed attempt is logged while connecting; the summary printed afterwards says it once.
    logging.getLogger("gateway.tools.mcp").setLevel(logging.ERROR)
    sources = McpSources(config.tools.mcp_servers, registry)
    try:
        await sources.start()
        return sources.unavailable()
    finally:
        await sources.close()


def tools_list(args: argparse.Namespace) -> int:
    config = _load(_config_path(args.config))
    # What loading logs as it goes (a tools.enabled name an MCP server provides later) is printed once, at the end.
    logging.getLogger("gateway.tools").setLevel(logging.ERROR)
    try:
        registry = ToolRegistry.from_config(config.tools, base_dir=Path.cwd())
    except ToolLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if config.tools.mcp_servers:
        for name, error in asyncio.run(_list_mcp_tools(config, registry)).items():
            print(f"warning: MCP server {name!r} is unavailable: {error or 'no answer yet'}", file=sys.stderr)
    for skipped in registry.skipped():
        print(f"skipped: {skipped.name!r} from {skipped.source}: {skipped.reason}", file=sys.stderr)
    allowed = _key_policy(config, args.key).allows_tool if args.key else None
    listing = [
        {**t.definition(), "x_source": t.source} for t in registry.enabled() if allowed is None or allowed(t.name)
    ]
    sys.stdout.write(orjson.dumps(listing, option=orjson.OPT_INDENT_2).decode() + "\n")
    registry.close()
    return 0


def _key_policy(config: GatewayConfig, name: str) -> KeyPolicy:
    for key in config.auth.api_keys:
        if key.name == name:
            return KeyPolicy.from_config(key)
    print(f"error: no API key named {name!r} in auth.api_keys", file=sys.stderr)
    raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="OpenAI-compatible gateway with server-side tools")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("serve", help="run the gateway")
    run.add_argument("--config", help=f"config file (default: $GATEWAY_CONFIG, else {DEFAULT_CONFIG_PATH})")
    run.add_argument("--host")
    run.add_argument("--port", type=int)
    run.add_argument("--workers", type=int)
    run.set_defaults(handler=serve)

    check = commands.add_parser("check-config", help="validate the config and print it, secrets masked")
    check.add_argument("--config")
    check.set_defaults(handler=check_config)

    tools = commands.add_parser("tools", help="inspect server-side tools")
    tools_commands = tools.add_subparsers(dest="tools_command", required=True)
    listing = tools_commands.add_parser("list", help="print the loaded tools' OpenAI definitions")
    listing.add_argument("--config")
    listing.add_argument("--key", help="only the tools this API key (by name) may use")
    listing.set_defaults(handler=tools_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
