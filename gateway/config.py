"""The gateway's YAML configuration, validated once into typed objects.

Strings may reference the environment as ``${VAR}`` (an error when unset),
``${VAR:-default}`` (the default when unset or empty, as in the shell) or
``${VAR:?message}`` (an error saying ``message`` when unset or empty). Every model
forbids unknown keys, so a typo in the file is an error at start-up rather than a
setting silently ignored. Relative paths in the file are relative to the file's folder.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import urllib.parse
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway import tool_embedding

DEFAULT_CONFIG_PATH = "config/gateway.yaml"

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}")


class ConfigError(Exception):
    """The configuration file cannot be read or does not validate.

    ``problems`` holds one ``file: key.path: message`` line per problem.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _refuse_duplicates(names: list[str], what: str) -> None:
    """A ValueError naming each of ``names`` that appears more than once, as ``duplicate <what>: a, b``."""
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate {what}: {', '.join(duplicates)}")


LOOPBACK_HOST = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the port to this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name, or "" (every interface)


def exposure_problem(host: str, server: ServerConfig, auth: AuthConfig) -> str | None:
    """Why listening on ``host`` is refused: reachable from other machines, no keys, and not said on purpose."""
    if is_loopback(host) or auth.api_keys or server.allow_unauthenticated_public:
        return None
    return (
        f"server.host is {host!r}, reachable from other machines, but auth.api_keys is empty: anyone who reaches "
        "the port could use the upstreams (and their keys) and run the server's tools. Add keys under "
        f"auth.api_keys, listen on {LOOPBACK_HOST}, or set server.allow_unauthenticated_public: true to serve "
        "without keys on purpose (behind a proxy that authenticates, or on a private network)."
    )


# Values copied from examples and docs: a gateway key equal to one of these protects nothing.
PLACEHOLDER_KEYS = frozenset(
    {
        "change-me",
        "changeme",
        "change_me",
        "sk-change-me",
        "sk-changeme",
        "your-key-here",
        "your_key_here",
        "your-api-key",
        "your_api_key",
        "your-api-key-here",
        "sk-your-key-here",
        "api-key",
        "api_key",
        "apikey",
        "key",
        "secret",
        "password",
        "token",
        "placeholder",
        "example",
        "test",
        "todo",
        "xxx",
        "sk-xxx",
        "sk-...",
        "...",
        "sk-",
    }
)
_PLACEHOLDER_DIGESTS = frozenset(hashlib.sha256(k.encode()).hexdigest() for k in PLACEHOLDER_KEYS | {""})


def placeholder_reason(key: str) -> str | None:
    """Why ``key`` is not a real secret, or None."""
    normalized = key.strip().lower()
    if not normalized:
        return "is empty"
    if normalized in PLACEHOLDER_KEYS or (normalized.startswith("<") and normalized.endswith(">")):
        return f"is the placeholder {key!r}"
    return None


def beside_config(path: str, info: ValidationInfo) -> str:
    """A relative path as seen from the config file's folder (``base_dir`` in the validation context).

    Without a ``base_dir`` (a config validated from data, not read from a file) the path is left as it is.
    The join is lexical, so ``../tools`` beside ``/app/config/gateway.yaml`` is ``/app/tools`` even when the
    file is a symlink, as Kubernetes mounts ConfigMaps.
    """
    base_dir = (info.context or {}).get("base_dir")
    path = os.path.expanduser(path)
    if base_dir is None or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base_dir, path))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = Field(
        LOOPBACK_HOST, description="default: 0.0.0.0 when auth.api_keys is set, else 127.0.0.1 (see GatewayConfig)"
    )
    allow_unauthenticated_public: bool = Field(
        False, description="listen on a non-loopback host with auth.api_keys empty: open to anyone who reaches it"
    )
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    keepalive_interval_s: float = Field(15.0, gt=0, description="SSE comment interval while tools run")
    max_connections: int = Field(
        1000, ge=1, description="open client connections per worker; more are answered 503 and closed"
    )
    header_timeout_s: float = Field(10.0, gt=0, description="deadline for a request's headers to arrive")
    body_timeout_s: float = Field(30.0, gt=0, description="deadline for a request's body to arrive")
    max_model_chars: int = Field(256, ge=1, description="longer model names are refused with 400")
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="on SIGTERM, how long in-flight requests and streams may take to finish"
    )
    passthrough_paths: list[str] = Field(
        default_factory=lambda: ["/v1/embeddings", "/v1/completions"],
        description="JSON endpoints forwarded as sent to the upstream serving the body's model",
    )

    @field_validator("passthrough_paths")
    @classmethod
    def _plain_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            # Compared with the request's path as is: no query, no dot segments, nothing the gateway serves itself.
            if not re.fullmatch(r"(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+", path):
                raise ValueError(f"{path!r} is not a plain path like /v1/embeddings")
            if path in ("/v1/chat/completions", "/v1/models", "/healthz", "/readyz", "/metrics") or path.startswith(
                "/v1/models/"
            ):
                raise ValueError(f"{path} is served by the gateway itself")
        _refuse_duplicates(value, "passthrough paths")
        return value


class TimeoutConfig(_Strict):
    connect: float = Field(5.0, gt=0)
    read: float = Field(300.0, gt=0)


class RetryConfig(_Strict):
    attempts: int = Field(3, ge=1, description="total tries of one upstream call, the first included")
    initial_wait_s: float = Field(0.25, ge=0)
    max_wait_s: float = Field(10.0, ge=0, description="cap on one wait, Retry-After included")
    max_total_s: float = Field(30.0, gt=0, description="give up retrying after this long")


class FallbackConfig(_Strict):
    upstream: str
    model: str | None = None


def is_pattern(name: str) -> bool:
    """A model entry that is a glob pattern, not a model name."""
    return any(c in name for c in "*?[")


class UpstreamConfig(_Strict):
    name: str
    api: Literal["openai", "anthropic"] = Field(
        "openai", description="the upstream's protocol: OpenAI chat completions, or Anthropic's Messages API"
    )
    base_url: str
    api_key: str = ""
    auth_scheme: Literal["bearer", "api-key"] = "bearer"
    headers: dict[str, str] = Field(default_factory=dict)
    models: list[str] = Field(default_factory=lambda: ["*"], description="client model names or glob patterns")
    model_map: dict[str, str] = Field(default_factory=dict)
    timeout_s: TimeoutConfig = Field(default_factory=TimeoutConfig)
    retries: RetryConfig = Field(default_factory=RetryConfig)
    fallbacks: list[FallbackConfig] = Field(default_factory=list)
    server_tools: bool = True
    stream_usage: bool = Field(True, description="ask for stream_options.include_usage; off for servers that reject it")
    max_connections: int = Field(256, ge=1)
    max_answer_bytes: int = Field(
        128 * 1024 * 1024, ge=1024, description="a non-streamed answer (decompressed) larger than this is a 502"
    )
    anthropic_version: str = Field("2023-06-01", description="api: anthropic; sent as the anthropic-version header")
    default_max_tokens: int = Field(
        4096, ge=1, description="api: anthropic; max_tokens when the client sets none (Anthropic requires one)"
    )

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    def serves(self, model: str) -> bool:
        """Whether a client model name is this upstream's: a name in ``models``, or one a pattern in it matches."""
        return model in self.models or any(fnmatchcase(model, pattern) for pattern in self.patterns)

    @property
    def patterns(self) -> list[str]:
        """The glob patterns in ``models`` (``*``, ``claude-*``): the upstream's own list names those models."""
        return [m for m in self.models if is_pattern(m)]

    def upstream_model(self, model: str) -> str:
        return self.model_map.get(model, model)


class KeyLimits(_Strict):
    """Per-key limits; an unset limit does not apply."""

    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1, description="upstream usage, all rounds of a request")
    max_concurrent: int | None = Field(None, ge=1, description="requests in flight, per gateway process")
    max_rounds: int | None = Field(None, ge=1, description="tighter than loop.max_rounds, never looser")


class ApiKey(_Strict):
    """A gateway key and what it may do; a bare string in the config is all models, all tools, no limits."""

    name: str
    key: str | None = Field(None, min_length=1)
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="the key's digest instead")
    models: list[str] = Field(default_factory=lambda: ["*"], description="glob patterns over client model names")
    tools: list[str] = Field(default_factory=lambda: ["*"], description="glob patterns over server tool names")
    limits: KeyLimits = Field(default_factory=KeyLimits)

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKey:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("set exactly one of 'key' or 'key_sha256'")
        return self

    @field_validator("key", mode="before")
    @classmethod
    def _not_a_placeholder(cls, value: Any, info: ValidationInfo) -> Any:
        reason = placeholder_reason(value) if isinstance(value, str) else None
        if reason is not None:
            raise ValueError(
                f"the key of entry {info.data.get('name', '?')!r} {reason}, which protects nothing: "
                "set a real secret, e.g. from the environment as ${GATEWAY_KEY:?set a gateway key}"
            )
        return value

    @field_validator("key_sha256")
    @classmethod
    def _not_a_placeholder_digest(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value.lower() in _PLACEHOLDER_DIGESTS:
            raise ValueError(
                f"key_sha256 of entry {info.data.get('name', '?')!r} is the digest of a placeholder key, "
                "which protects nothing: hash a real secret"
            )
        return value


class AuthConfig(_Strict):
    api_keys: list[ApiKey] = Field(default_factory=list)

    @field_validator("api_keys")
    @classmethod
    def _unique_key_names(cls, value: list[ApiKey]) -> list[ApiKey]:
        # Names scope stored state and label metrics: two keys sharing one would share both.
        _refuse_duplicates([k.name for k in value], "API key names")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _name_bare_keys(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        return [
            {"name": f"key-{i + 1}", "key": item} if isinstance(item, str) else item for i, item in enumerate(value)
        ]


class LoopConfig(_Strict):
    max_rounds: int = Field(8, ge=1)
    max_tool_calls: int = Field(32, ge=1, description="server tool calls per request")
    deadline_s: float = Field(600.0, gt=0, description="wall time of one request, all rounds")
    max_parallel_calls: int = Field(8, ge=1, description="concurrent tool runs within one request")
    max_global_calls: int = Field(64, ge=1, description="concurrent tool runs across the process")
    default_timeout_s: float = Field(30.0, gt=0, description="per tool call, unless the tool sets one")
    max_result_chars: int = Field(16_000, ge=256)
    continuation_ttl_s: float = Field(900.0, gt=0)
    continuation_max_entries: int = Field(1000, ge=1, description="stored mixed turns per API key")
    continuation_max_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="stored mixed turns per API key")


class McpServerConfig(_Strict):
    name: str
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    allow: list[str] | None = None
    timeout_s: float = Field(30.0, gt=0)
    prefix: str | None = None
    ping_interval_s: float = Field(
        5.0, gt=0, description="HTTP servers: how often a ping checks the connection; it must answer within this time"
    )

    @field_validator("cwd")
    @classmethod
    def _cwd_beside_config(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else beside_config(value, info)

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("set exactly one of 'command' (stdio) or 'url' (streamable HTTP)")
        return self

    @property
    def tool_prefix(self) -> str:
        return f"{self.name}__" if self.prefix is None else self.prefix


class ToolGroup(_Strict):
    """An intent group: a request whose latest user message has one of the keywords gets these tools first."""

    keywords: list[str] = Field(min_length=1)
    tools: list[str] = Field(min_length=1, description="tool names or glob patterns")


class ToolSelectionConfig(_Strict):
    """Which server tools each request is offered: all of them, or the ones relevant to its conversation."""

    mode: Literal["all", "relevant"] = "all"
    max_tools: int = Field(6, ge=1, description="mode relevant: tools ranked in per request, beyond the pinned ones")
    ranker: Literal["lexical", "hybrid"] = Field(
        "lexical", description="mode relevant: BM25 over the tools' words, or BM25 plus static word embeddings"
    )
    always: list[str] = Field(default_factory=list, description="tool names or glob patterns offered regardless")
    groups: dict[str, ToolGroup] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _embeddings_installed(self) -> ToolSelectionConfig:
        # Found at load (check-config too), not at the first request that ranks.
        if self.ranker == "hybrid" and not tool_embedding.available():
            raise ValueError(tool_embedding.MISSING)
        return self


class ToolsConfig(_Strict):
    paths: list[str] = Field(default_factory=lambda: ["tools"])
    enabled: list[str] | None = None
    selection: ToolSelectionConfig = Field(default_factory=ToolSelectionConfig)
    settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-tool settings, read by the tool through its context"
    )
    mcp_servers: list[McpServerConfig] = Field(default_factory=list)

    @field_validator("paths")
    @classmethod
    def _paths_beside_config(cls, value: list[str], info: ValidationInfo) -> list[str]:
        # Only paths the file sets: the default, tools/, stays in the working directory (the image's /app/tools).
        return [beside_config(path, info) for path in value]

    @field_validator("mcp_servers")
    @classmethod
    def _unique_server_names(cls, value: list[McpServerConfig]) -> list[McpServerConfig]:
        _refuse_duplicates([s.name for s in value], "MCP server names")
        return value


class LoggingConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class StateConfig(_Strict):
    """Where state that outlives a request lives: this process, or Redis shared by every worker and replica."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "gateway:"
    timeout_s: float = Field(0.5, gt=0, description="deadline of every Redis call")


class ResponsesConfig(_Strict):
    """The Responses API's stored responses (``store: true``), kept in ``state.backend``."""

    store_ttl_s: float = Field(3600.0, gt=0, description="how long a stored response can be read or continued")
    max_stored_per_key: int = Field(10_000, ge=1, description="stored responses per API key, oldest evicted first")
    max_stored_bytes_per_key: int = Field(
        256 * 1024 * 1024, ge=1024, description="bytes of stored responses per API key, oldest evicted first"
    )


class TracingConfig(_Strict):
    """OpenTelemetry tracing; the exporter, service name, sampler and batching come from the standard
    ``OTEL_*`` environment variables, read by the OpenTelemetry SDK itself."""

    enabled: bool = Field(False, description="export spans over OTLP/HTTP; off: OpenTelemetry is never loaded")


class GatewayConfig(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    upstreams: list[UpstreamConfig] = Field(min_length=1)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_host(cls, data: Any) -> Any:
        """An unset server.host: every interface when gateway keys guard it, else loopback only."""
        if not isinstance(data, dict):
            return data
        server = data.get("server") or {}
        auth = data.get("auth") or {}
        if not isinstance(server, dict) or not isinstance(auth, dict) or "host" in server:
            return data
        host = ALL_INTERFACES if auth.get("api_keys") else LOOPBACK_HOST
        return {**data, "server": {**server, "host": host}}

    @model_validator(mode="after")
    def _keys_or_loopback(self) -> GatewayConfig:
        problem = exposure_problem(self.server.host, self.server, self.auth)
        if problem is not None:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _shared_state_for_workers(self) -> GatewayConfig:
        if self.server.workers > 1 and self.state.backend == "memory":
            raise ValueError(
                f"server.workers is {self.server.workers} but state.backend is 'memory': each worker would keep "
                "its own mixed-turn continuations, and a follow-up landing on another worker would lose its "
                "turn. Set state.backend: redis (with state.redis_url), or run one worker per replica."
            )
        return self

    @model_validator(mode="after")
    def _check_references(self) -> GatewayConfig:
        names = [u.name for u in self.upstreams]
        _refuse_duplicates(names, "upstream names")
        for upstream in self.upstreams:
            for fallback in upstream.fallbacks:
                if fallback.upstream not in names:
                    raise ValueError(f"upstream {upstream.name!r} falls back to unknown upstream {fallback.upstream!r}")
        return self

    def upstream_for(self, model: str) -> UpstreamConfig | None:
        return next((u for u in self.upstreams if u.serves(model)), None)

    def upstream_named(self, name: str) -> UpstreamConfig:
        return next(u for u in self.upstreams if u.name == name)


def interpolate(value: Any, environ: dict[str, str], path: str, missing: list[str]) -> Any:
    """Replace ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` in every string of a parsed YAML tree."""
    if isinstance(value, dict):
        return {k: interpolate(v, environ, f"{path}.{k}" if path else str(k), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ, f"{path}.{i}", missing) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, operator, word = match.group(1), match.group(2), match.group(3)
        found = environ.get(name)
        # As in the shell and compose: with a colon, an empty value counts as unset.
        if found is not None and (operator is None or found):
            return found
        if operator == ":-":
            return word
        if operator == ":?":
            state = "is empty" if found == "" else "is not set"
            missing.append(f"{path}: environment variable {name} {state}{': ' + word if word else ''}")
            return ""
        missing.append(f"{path}: environment variable {name} is not set")
        return ""

    return _ENV_REFERENCE.sub(substitute, value)


def parse_config(
    text: str, source: str, environ: dict[str, str] | None = None, base_dir: str | os.PathLike[str] | None = None
) -> GatewayConfig:
    """Validate YAML text; raise ConfigError with ``source: key.path: message`` lines.

    Relative paths in it are taken from ``base_dir``, the config file's folder, when given.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping"])
    missing: list[str] = []
    resolved = interpolate(raw, dict(os.environ) if environ is None else environ, "", missing)
    if missing:
        raise ConfigError([f"{source}: {m}" for m in missing])
    try:
        context = {"base_dir": None if base_dir is None else os.fspath(base_dir)}
        return GatewayConfig.model_validate(resolved, context=context)
    except ValidationError as exc:
        raise ConfigError(
            [f"{source}: {'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()]
        ) from exc


def load_config(path: str | Path | None = None) -> GatewayConfig:
    """Read the config file at ``path``, else ``$GATEWAY_CONFIG``, else the default path."""
    source = Path(path or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror}"]) from exc
    # abspath, not resolve(): a symlinked file (a Kubernetes ConfigMap) keeps the folder it is mounted in.
    return parse_config(text, str(source), base_dir=os.path.dirname(os.path.abspath(source)))


_SECRET_KEYS = {"api_key", "key", "authorization", "token", "password", "secret"}


def masked(config: GatewayConfig) -> dict[str, Any]:
    """The resolved config as plain data, with secrets replaced by ``***``."""

    def mask(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: mask(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [mask(v, key) for v in value]
        if isinstance(value, str) and value and key.lower() in _SECRET_KEYS:
            return "***"
        return value

    data = config.model_dump(mode="json")
    for upstream in data["upstreams"]:
        upstream["headers"] = {k: "***" for k in upstream["headers"]}
    for server in data["tools"]["mcp_servers"]:
        server["headers"] = {k: "***" for k in server["headers"]}
        server["env"] = {k: "***" for k in server["env"]}
    url = urllib.parse.urlsplit(data["state"]["redis_url"])
    if url.password:
        netloc = url.netloc.replace(f":{url.password}@", ":***@", 1)
        data["state"]["redis_url"] = urllib.parse.urlunsplit(url._replace(netloc=netloc))
    return mask(data)  # type: ignore[no-any-return]
