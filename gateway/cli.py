"""The ``gateway`` command: serve, check-config, tools list."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from pathlib import Path

import orjson
import yaml

from gateway.config import DEFAULT_CONFIG_PATH, ConfigError, GatewayConfig, load_config, masked
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

    from gateway.app import create_app
    from gateway.logs import configure_logging

    path = _config_path(args.config)
    config = _load(path)
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    workers = args.workers or config.server.workers
    configure_logging(config.logging.level, config.logging.format)
    options = {"host": host, "port": port, "log_config": None, "access_log": False, "timeout_graceful_shutdown": 30}
    try:
        if workers == 1:
            uvicorn.run(create_app(config, base_dir=Path.cwd()), **options)  # type: ignore[arg-type]
            return 0
        # Workers are separate processes: metrics go through prometheus-client's
        # multiprocess files, which must be configured before any worker starts.
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
        os.environ["GATEWAY_CONFIG"] = str(Path(path).resolve())
        create_app(config, base_dir=Path.cwd())  # fail fast on broken tools, before forking workers
        uvicorn.run("gateway.cli:app_from_env", factory=True, workers=workers, **options)  # type: ignore[arg-type]
    except ToolLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def check_config(args: argparse.Namespace) -> int:
    config = _load(_config_path(args.config))
    sys.stdout.write(yaml.safe_dump(masked(config), sort_keys=False))
    return 0


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
    try:
        registry = ToolRegistry.from_config(config.tools, base_dir=Path.cwd())
    except ToolLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if config.tools.mcp_servers:
        for name, error in asyncio.run(_list_mcp_tools(config, registry)).items():
            print(f"warning: MCP server {name!r} is unavailable: {error or 'no answer yet'}", file=sys.stderr)
    listing = [{**t.definition(), "x_source": t.source} for t in registry.enabled()]
    sys.stdout.write(orjson.dumps(listing, option=orjson.OPT_INDENT_2).decode() + "\n")
    registry.close()
    return 0


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
    listing.set_defaults(handler=tools_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
