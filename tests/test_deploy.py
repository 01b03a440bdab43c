"""The deployment files: Dockerfile, compose stack, Prometheus scrape config, Grafana provisioning.

No container engine runs where the tests do, so each file is checked by its own linter or
schema, then parsed and compared with the code it deploys: the config schema in
``gateway.config`` and the series defined in ``gateway.metrics``.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from prometheus_client import Counter, Gauge, Histogram, Summary

from gateway import metrics
from gateway.config import DEFAULT_CONFIG_PATH, ConfigError, GatewayConfig, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
LOCK_FILE = ROOT / "requirements.lock"
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = ROOT / "config" / "prometheus.yml"
GRAFANA_DIR = ROOT / "config" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "gateway.json"
ENV_EXAMPLE = ROOT / "config" / ".env.example"

SERVICES = {"gateway", "vllm", "llamacpp", "prometheus", "grafana", "redis", "gateway-replica", "balancer"}


def _executable(name: str) -> str:
    """A console script of the test interpreter's environment, else one on PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; it comes with the project's dev extra")
    return found


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _load_without_environment(monkeypatch: pytest.MonkeyPatch, path: Path) -> GatewayConfig:
    """Load a config with every variable it references unset.

    Each reference needs a default: a container starts before anyone writes a .env.
    """
    for name in re.findall(r"\$\{(\w+)", path.read_text(encoding="utf-8")):
        monkeypatch.delenv(name, raising=False)
    return load_config(path)


# --- Dockerfile -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON-array form's items; shell form is split like a shell would."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            # Options such as --interval come before the command.
            text = re.split(r"(?:^|\s)CMD\s+", text, maxsplit=1)[-1]
        if text.startswith("["):
            items = json.loads(text)
            assert isinstance(items, list)
            return [str(item) for item in items]
        return shlex.split(text)


def _dockerfile_stages() -> list[list[Instruction]]:
    """Instructions grouped by build stage, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"

    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, "the Dockerfile must start with FROM"
        stages[-1].append(instruction)
    return stages


def _final_stage() -> list[Instruction]:
    return _dockerfile_stages()[-1]


def _env(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for item in shlex.split(instruction.arguments):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_executable("hadolint"), "--no-color", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_builds_in_a_separate_stage_from_the_slim_runtime() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2
    base = stages[-1][0].arguments.split()[0]
    assert re.fullmatch(r"python:3\.1[12][\w.-]*-slim[\w.-]*", base), base


def test_dockerfile_final_stage_installs_nothing() -> None:
    """Build tools, apt lists and pip caches stay in the builder stage."""
    for instruction in _final_stage():
        if instruction.keyword == "RUN":
            assert not re.search(r"\b(apt-get|apt|pip|pip3)\s+install\b", instruction.arguments), instruction
    for stage in _dockerfile_stages():
        for instruction in stage:
            if instruction.keyword == "RUN" and re.search(r"\bpip3?\s+install\b", instruction.arguments):
                assert "--no-cache-dir" in instruction.arguments, instruction


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [i.arguments for i in _final_stage() if i.keyword == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_dockerfile_exposes_8080_and_checks_healthz_without_curl() -> None:
    stage = _final_stage()
    exposed = {port for i in stage if i.keyword == "EXPOSE" for port in i.arguments.split()}
    assert {"8080", "8080/tcp"} & exposed
    healthchecks = [i for i in stage if i.keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    command = " ".join(healthchecks[0].exec_form())
    # The slim Python image ships no curl or wget.
    assert command.startswith("python") and "/healthz" in command and ":8080" in command


def test_dockerfile_copies_config_and_tools_into_app() -> None:
    stage = _final_stage()
    workdir = next(i.arguments for i in reversed(stage) if i.keyword == "WORKDIR")
    copied: dict[str, PurePosixPath] = {}
    for instruction in stage:
        if instruction.keyword == "COPY" and "--from" not in instruction.arguments:
            *sources, target = [a for a in instruction.arguments.split() if not a.startswith("--")]
            for source in sources:
                copied[source.rstrip("/")] = PurePosixPath(workdir, target)
    assert copied.get("config") == PurePosixPath("/app/config")
    assert copied.get("tools") == PurePosixPath("/app/tools")


def test_dockerfile_serves_the_default_config_from_app(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = _final_stage()
    entrypoint = next((i.exec_form() for i in reversed(stage) if i.keyword == "ENTRYPOINT"), [])
    command = next((i.exec_form() for i in reversed(stage) if i.keyword == "CMD"), [])
    argv = entrypoint + command
    assert argv[:2] == ["gateway", "serve"], argv
    # The path comes from GATEWAY_CONFIG, so compose and `docker run -e` can replace it.
    assert "--config" not in argv
    assert _env(stage)["GATEWAY_CONFIG"] == f"/app/{DEFAULT_CONFIG_PATH}"
    # The final stage copies config/ to /app/config, so the image runs this file.
    _load_without_environment(monkeypatch, ROOT / DEFAULT_CONFIG_PATH)


def test_image_default_config_listens_on_every_interface_only_with_keys_or_on_purpose() -> None:
    image_env = _env(_final_stage())
    config_path = PurePosixPath(image_env["GATEWAY_CONFIG"])
    text = (ROOT / DEFAULT_CONFIG_PATH).read_text(encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        parse_config(text, str(config_path), image_env, base_dir=config_path.parent)
    assert "server.allow_unauthenticated_public" in "\n".join(refused.value.problems)
    opened = {**image_env, "GATEWAY_ALLOW_UNAUTHENTICATED_PUBLIC": "true"}
    config = parse_config(text, str(config_path), opened, base_dir=config_path.parent)
    assert config.server.host == "0.0.0.0"
    # Resolved from the config's folder, /app/config: the tools the image copies to /app/tools.
    assert config.tools.paths == ["/app/tools"]
    # Outside the image (`make run`), the same file keeps to this machine.
    assert parse_config(text, "gateway.yaml", {}).server.host == "127.0.0.1"


def _lock() -> dict[str, tuple[Requirement, list[str]]]:
    """Each requirement of requirements.lock by normalised name, with its hashes."""
    text = re.sub(r"\\\n\s*", " ", LOCK_FILE.read_text(encoding="utf-8"))
    entries: dict[str, tuple[Requirement, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *hashes = re.split(r"\s+--hash=", line)
        parsed = Requirement(requirement)
        entries[canonicalize_name(parsed.name)] = (parsed, hashes)
    return entries


def test_requirements_lock_pins_every_runtime_dependency_of_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    # The image can turn every option on: the `semantic` extra (tools.selection.ranker: hybrid) is locked too.
    dependencies = project["dependencies"] + project["optional-dependencies"]["semantic"]
    lock = _lock()
    assert lock, "requirements.lock is empty"
    for line in dependencies:
        wanted = Requirement(line)
        name = canonicalize_name(wanted.name)
        assert name in lock, f"{wanted.name} is a dependency in pyproject.toml but not in requirements.lock: make lock"
        pinned, _ = lock[name]
        (version,) = [Version(spec.version) for spec in pinned.specifier]
        assert wanted.specifier.contains(version, prereleases=True), f"{pinned} does not satisfy {wanted}: make lock"
        assert str(pinned.marker) == str(wanted.marker), f"{pinned} lost the marker of {wanted}"
    for name, (pinned, hashes) in lock.items():
        assert [spec.operator for spec in pinned.specifier] == ["=="], f"{name} is not pinned to one version"
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), f"{name} has no hashes"


def test_dockerfile_installs_locked_dependencies_in_a_layer_before_the_code() -> None:
    """A code change rebuilds from `COPY gateway/` on; the dependencies' layer stays cached."""
    (builder,) = [stage for stage in _dockerfile_stages() if any("gateway/" in i.arguments for i in stage)]
    steps = [i for i in builder if i.keyword in {"COPY", "RUN"}]
    installs = [n for n, i in enumerate(steps) if i.keyword == "RUN" and re.search(r"\bpip3?\s+install\b", i.arguments)]
    copies = {n: i.arguments.split()[:-1] for n, i in enumerate(steps) if i.keyword == "COPY"}
    lock_install = next(n for n in installs if f"-r {LOCK_FILE.name}" in steps[n].arguments)
    assert "--require-hashes" in steps[lock_install].arguments
    # Before the dependencies are installed, only the lock is in the build context.
    assert [sources for n, sources in copies.items() if n < lock_install] == [[LOCK_FILE.name]]
    code = next(n for n, sources in copies.items() if "gateway/" in sources)
    assert code > lock_install
    (project_install,) = [n for n in installs if n > code]
    assert "--no-deps" in steps[project_install].arguments


# --- docker-compose.yml ---------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    document = _load_yaml(COMPOSE_FILE)
    assert isinstance(document, dict)
    return document


def _service(name: str) -> dict[str, Any]:
    service = _compose()["services"][name]
    assert isinstance(service, dict)
    return service


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(item.partition("=")[::2] for item in environment)
    return {str(k): str(v) for k, v in environment.items()}


def _bind_mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path to (host path, read-only) for every bind mount of a service."""
    mounts: dict[str, tuple[str, bool]] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            read_only = bool(mode) and "ro" in mode[0].split(",")
        else:
            source, target = volume["source"], volume["target"]
            read_only = bool(volume.get("read_only", False))
        if source.startswith((".", "/")):
            mounts[target] = (source, read_only)
    return mounts


def _host_path(service: dict[str, Any], container_path: str) -> Path:
    """The file in this repository that a bind mount shows at ``container_path``."""
    path = PurePosixPath(container_path)
    for target, (source, _) in sorted(_bind_mounts(service).items(), key=lambda m: -len(m[0])):
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents:
            return ROOT / source / path.relative_to(target)
    raise AssertionError(f"nothing in the repository is mounted at {container_path}")


def _published_ports(service: dict[str, Any]) -> dict[int, int]:
    """Container port to host port, for ports published as ``HOST:CONTAINER`` or long syntax."""
    ports: dict[int, int] = {}
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports[int(port["target"])] = int(port["published"])
        else:
            host, _, container = str(port).split("/")[0].rpartition(":")
            ports[int(container)] = int(host.rpartition(":")[-1])
    return ports


def _healthcheck_command(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


def test_compose_file_matches_the_compose_specification() -> None:
    result = subprocess.run(
        [_executable("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_has_the_expected_services_and_no_version_key() -> None:
    compose = _compose()
    assert "version" not in compose
    assert set(compose["services"]) == SERVICES


def test_compose_model_servers_and_replicas_are_opt_in_by_profile() -> None:
    assert _service("vllm")["profiles"] == ["gpu"]
    assert _service("llamacpp")["profiles"] == ["cpu"]
    assert _service("gateway-replica")["profiles"] == _service("balancer")["profiles"] == ["replicas"]
    for name in SERVICES - {"vllm", "llamacpp", "gateway-replica", "balancer"}:
        assert "profiles" not in _service(name), f"{name} would not start by default"


def test_compose_replicas_share_redis_behind_a_round_robin_balancer(monkeypatch: pytest.MonkeyPatch) -> None:
    gateway, replica = _service("gateway"), _service("gateway-replica")
    assert replica["build"] == gateway["build"] and _environment(replica) == _environment(gateway)
    config = _load_without_environment(monkeypatch, _host_path(gateway, _environment(gateway)["GATEWAY_CONFIG"]))
    assert config.state.backend == "redis" and config.state.redis_url == "redis://redis:6379/0"
    assert "redis" in gateway["depends_on"] and "redis" in replica["depends_on"]
    nginx = (ROOT / "config" / "nginx-replicas.conf").read_text(encoding="utf-8")
    assert "server gateway:8080;" in nginx and "server gateway-replica:8080;" in nginx
    assert "proxy_buffering off;" in nginx  # streams go through chunk by chunk
    assert _published_ports(_service("balancer")) == {8090: 8090}


@pytest.mark.parametrize(
    ("name", "endpoint"),
    [
        ("gateway", ":8080/healthz"),
        ("vllm", ":8000/health"),
        ("llamacpp", ":8000/health"),
        ("prometheus", ":9090/-/healthy"),
        ("grafana", ":3000/api/health"),
        ("gateway-replica", ":8080/healthz"),
        ("balancer", ":8090/healthz"),
    ],
)
def test_compose_service_has_a_healthcheck(name: str, endpoint: str) -> None:
    service = _service(name)
    assert not service["healthcheck"].get("disable", False)
    command = _healthcheck_command(service)
    assert endpoint in command
    if name == "gateway":
        assert "curl" not in command and "wget" not in command


def test_compose_images_are_pinned() -> None:
    # llama.cpp's `server` tag rolls; a `server-bNNNN` build tag pins it where that matters.
    for name in SERVICES - {"gateway", "gateway-replica", "llamacpp"}:
        image = _service(name)["image"]
        assert re.search(r":v?\d+(\.\d+)+$", image), image
    assert "build" in _service("gateway")


def test_compose_gateway_publishes_8080_and_mounts_config_and_tools_read_only() -> None:
    gateway = _service("gateway")
    assert _published_ports(gateway) == {8080: 8080}
    mounts = _bind_mounts(gateway)
    assert mounts["/app/config"] == ("./config", True)
    assert mounts["/app/tools"] == ("./tools", True)
    assert gateway["restart"] == "unless-stopped"


def test_compose_gateway_env_file_is_optional() -> None:
    env_files = _service("gateway")["env_file"]
    assert env_files == [{"path": ".env", "required": False}]


def test_compose_gateway_config_exists_and_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = _service("gateway")
    path = _host_path(gateway, _environment(gateway)["GATEWAY_CONFIG"])
    assert path.is_file(), path
    config = _load_without_environment(monkeypatch, path)
    assert [u.name for u in config.upstreams] == ["model-server"]
    assert config.upstreams[0].base_url == "http://model-server:8000/v1"
    assert config.server.port in _published_ports(gateway)


def _env_example() -> dict[str, str]:
    """config/.env.example as compose reads .env: KEY=VALUE lines, comments skipped."""
    pairs = (line.partition("=") for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines())
    return {key.strip(): value.strip() for key, _, value in pairs if key.strip() and not key.startswith("#")}


def _services_under(profiles: set[str]) -> dict[str, dict[str, Any]]:
    """The services `docker compose --profile ...` starts: those without profiles and those of the given ones."""
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return {name: s for name, s in services.items() if not s.get("profiles") or profiles & set(s["profiles"])}


def _answers_to(name: str, service: dict[str, Any]) -> set[str]:
    """The host names a service has on the compose network: its own and its aliases."""
    names = {name}
    networks = service.get("networks", {})
    if isinstance(networks, dict):
        for settings in networks.values():
            names |= set((settings or {}).get("aliases", []))
    return names


def _command_port(service: dict[str, Any]) -> int | None:
    command = service.get("command", [])
    return int(command[command.index("--port") + 1]) if "--port" in command else None


@pytest.mark.parametrize("env_file", [False, True], ids=["without .env", "with .env from .env.example"])
@pytest.mark.parametrize("profiles", [["gpu"], ["cpu"], ["gpu", "replicas"], ["cpu", "replicas"]], ids="+".join)
def test_compose_config_reaches_a_service_of_the_profile(profiles: list[str], env_file: bool) -> None:
    """Each profile works as shipped: every URL the gateway's config resolves to names a running service."""
    gateway = _service("gateway")
    path = _host_path(gateway, _environment(gateway)["GATEWAY_CONFIG"])
    environ = {**(_env_example() if env_file else {}), **_environment(gateway)}
    config = parse_config(path.read_text(encoding="utf-8"), str(path), environ)
    services = _services_under(set(profiles))
    for url in [u.base_url for u in config.upstreams] + [config.state.redis_url]:
        address = urlsplit(url)
        serving = [n for n, s in services.items() if address.hostname in _answers_to(n, s)]
        assert len(serving) == 1, (
            f"{url}: {serving or 'no service'} answers under --profile {' --profile '.join(profiles)}"
        )
        if url != config.state.redis_url:
            assert address.port == _command_port(services[serving[0]]), f"{url}: {serving[0]} listens elsewhere"


def test_compose_publishes_the_keyless_gateways_on_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = _service("gateway")
    config = _load_without_environment(monkeypatch, _host_path(gateway, _environment(gateway)["GATEWAY_CONFIG"]))
    assert not config.auth.api_keys and config.server.allow_unauthenticated_public
    for name in ("gateway", "balancer"):
        for port in _service(name)["ports"]:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"


def test_compose_vllm_serves_with_tool_calling_on_a_gpu() -> None:
    vllm = _service("vllm")
    assert vllm["image"].startswith("vllm/vllm-openai:")
    command = vllm["command"]
    assert command[command.index("--model") + 1].startswith("${VLLM_MODEL:-")
    assert "--enable-auto-tool-choice" in command
    assert command[command.index("--tool-call-parser") + 1] == "hermes"
    assert vllm["ipc"] == "host"
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "HF_TOKEN" in _environment(vllm)
    assert any(str(v).endswith(":/root/.cache/huggingface") for v in vllm["volumes"])


def _llamacpp_dockerfile() -> Path:
    build = _service("llamacpp")["build"]
    return ROOT / build["context"] / build.get("dockerfile", "Dockerfile")


def test_llamacpp_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_executable("hadolint"), "--no-color", str(_llamacpp_dockerfile())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_compose_llamacpp_serves_a_baked_in_model_with_a_tool_template() -> None:
    """The CPU profile starts offline: the model and the template are in the image, nothing is downloaded."""
    llamacpp = _service("llamacpp")
    dockerfile = _llamacpp_dockerfile()
    text = dockerfile.read_text(encoding="utf-8")
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    # llama.cpp's `server` tag rolls; a `server-bNNNN` build tag pins it.
    assert re.fullmatch(r"ghcr\.io/ggml-org/llama\.cpp:server-b\d+", bases[-1]), bases
    command = llamacpp["command"]
    assert "-hf" not in command and "--hf-repo" not in command
    model = PurePosixPath(command[command.index("--model") + 1])
    template = PurePosixPath(command[command.index("--chat-template-file") + 1])
    copied = {
        PurePosixPath(line.split()[-1]) / PurePosixPath(line.split()[-2]).name
        for line in re.findall(r"^COPY\s.*$", text, flags=re.MULTILINE)
    }
    assert model in copied and template in copied, copied
    template_source = dockerfile.parent / template.name
    assert "tools" in template_source.read_text(encoding="utf-8")
    assert "--jinja" in command
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "8000"
    assert re.findall(r"^EXPOSE\s+(\d+)", text, flags=re.MULTILINE) == ["8000"]


def test_env_example_lists_exactly_the_variables_the_configs_reference() -> None:
    referenced: set[str] = set()
    for path in (COMPOSE_FILE, ROOT / "config" / "gateway.compose.yaml"):
        referenced |= set(re.findall(r"\$\{(\w+)", path.read_text(encoding="utf-8")))
    listed = {
        line.split("=", 1)[0].strip()
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    assert listed == referenced


# --- Prometheus -----------------------------------------------------------------------------


def test_prometheus_scrapes_the_gateway_metrics_endpoint() -> None:
    jobs = _load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    targets = {
        (job.get("metrics_path", "/metrics"), target)
        for job in jobs
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert ("/metrics", "gateway:8080") in targets
    assert _bind_mounts(_service("prometheus"))["/etc/prometheus/prometheus.yml"] == (
        "./config/prometheus.yml",
        True,
    )


# --- Grafana --------------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def _panels() -> list[dict[str, Any]]:
    """Every non-row panel, including those nested in collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in _dashboard()["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def _exprs(panel: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in panel.get("targets", []) if target.get("expr")]


def _template_queries() -> list[str]:
    queries: list[str] = []
    for variable in _dashboard().get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") == "query":
            queries.append(query["query"] if isinstance(query, dict) else str(query))
    return queries


_PROMQL_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
    }
)
_GRAFANA_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\w+)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACKETED = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_QUANTILE = re.compile(r"histogram_quantile\(\s*([0-9.]+)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values`` query) reads.

    What is left once strings, label matchers, ranges, grouping clauses and Grafana
    variables are gone is functions (an identifier before ``(``), keywords and metrics.
    """
    label_values = _LABEL_VALUES.match(expr)
    if label_values:
        expr = label_values.group(1)
    expr = _GRAFANA_VARIABLE.sub("", expr)
    expr = _STRING.sub("", expr)
    expr = _BRACKETED.sub(" ", expr)
    expr = _GROUPING.sub(" ", expr)
    return {
        match.group(1)
        for match in _IDENTIFIER.finditer(expr)
        if not match.group(2) and match.group(1) not in _PROMQL_KEYWORDS
    }


def exported_sample_names() -> dict[str, set[str]]:
    """Sample names in ``/metrics`` for each family defined in ``gateway.metrics``."""
    suffixes = {
        "counter": ("_total",),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
    }
    families: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, Counter | Gauge | Histogram | Summary):
            for family in value.collect():
                families[family.name] = {family.name + suffix for suffix in suffixes[family.type]}
    return families


def test_metric_name_extraction_ignores_functions_labels_and_variables() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, stream) (rate(a_seconds_bucket{x="y}",z=~"$v"}'
        "[$__rate_interval]))) / on (stream) group_left sum(b_total offset 1h) * 1e3 + c"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c"}
    assert metric_names("label_values(gateway_requests_total, gen_ai_request_model)") == {"gateway_requests_total"}


def test_dashboard_reads_only_series_the_gateway_exports() -> None:
    allowed = set().union(*exported_sample_names().values())
    queries = [e for p in _panels() for e in _exprs(p)] + _template_queries()
    used = set().union(*(metric_names(q) for q in queries))
    assert used, "no metric found in the dashboard's queries"
    assert used <= allowed, sorted(used - allowed)


def test_dashboard_shows_every_series_the_gateway_exports() -> None:
    used = set().union(*(metric_names(e) for p in _panels() for e in _exprs(p)))
    unused = sorted(family for family, samples in exported_sample_names().items() if not samples & used)
    assert not unused


@dataclass(frozen=True)
class Topic:
    """What a panel must query to cover one question an operator asks of the gateway."""

    metric: str
    grouped_by: frozenset[str] = field(default_factory=frozenset)
    quantiles: frozenset[float] = field(default_factory=frozenset)
    matchers: frozenset[tuple[str, str, str]] = field(default_factory=frozenset)

    def covered_by(self, panel: dict[str, Any]) -> bool:
        exprs = _exprs(panel)
        used = set().union(*(metric_names(e) for e in exprs))
        grouped = {
            label.strip()
            for e in exprs
            for keyword, labels in _GROUPING.findall(e)
            if keyword in {"by", "without"}
            for label in labels.split(",")
        }
        quantiles = {float(q) for e in exprs for q in _QUANTILE.findall(e)}
        matchers = {m for e in exprs for m in _MATCHER.findall(e)}
        return (
            self.metric in used
            and self.grouped_by <= grouped
            and self.quantiles <= quantiles
            and self.matchers <= matchers
        )


TOPICS = {
    "request rate by model and status": Topic(
        "gateway_requests_total", grouped_by=frozenset({"gen_ai_request_model", "status"})
    ),
    "request latency p50/p90/p99": Topic(
        "gen_ai_server_request_duration_seconds_bucket", quantiles=frozenset({0.5, 0.9, 0.99})
    ),
    "time to first token percentiles": Topic(
        "gen_ai_server_time_to_first_token_seconds_bucket", quantiles=frozenset({0.5, 0.9, 0.99})
    ),
    "gateway overhead p50/p99": Topic("gateway_overhead_seconds_bucket", quantiles=frozenset({0.5, 0.99})),
    "requests in flight": Topic("gateway_requests_in_flight"),
    "upstream calls by outcome": Topic("gateway_upstream_requests_total", grouped_by=frozenset({"outcome"})),
    "tool calls by tool": Topic("gateway_tool_calls_total", grouped_by=frozenset({"gen_ai_tool_name", "outcome"})),
    "tool errors by tool": Topic(
        "gateway_tool_calls_total",
        grouped_by=frozenset({"gen_ai_tool_name"}),
        matchers=frozenset({("outcome", "!=", "ok")}),
    ),
    "tool duration p90 by tool": Topic(
        "gen_ai_client_operation_duration_seconds_bucket",
        grouped_by=frozenset({"gen_ai_tool_name"}),
        quantiles=frozenset({0.9}),
        matchers=frozenset({("gen_ai_operation_name", "=", "execute_tool")}),
    ),
    "tool rounds per request": Topic("gateway_tool_rounds_bucket"),
    "token rate by type": Topic("gen_ai_client_token_usage_sum", grouped_by=frozenset({"gen_ai_token_type"})),
}


@pytest.mark.parametrize("topic", list(TOPICS))
def test_dashboard_has_a_panel_for(topic: str) -> None:
    assert any(TOPICS[topic].covered_by(panel) for panel in _panels())


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    datasources = _load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert len(datasources) == 1
    datasource = datasources[0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert 9090 in _published_ports(_service("prometheus"))
    panels = _panels()
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_dashboard_panel_ids_are_unique() -> None:
    rows = [p for p in _dashboard()["panels"] if p["type"] == "row"]
    ids = [p["id"] for p in rows + _panels()]
    # Grafana keys panel state (links, view mode) by id.
    assert len(ids) == len(set(ids))


def test_grafana_loads_provisioning_and_the_dashboard_from_the_repository() -> None:
    grafana = _service("grafana")
    mounts = _bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == ("./config/grafana/provisioning", True)
    providers = _load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "gateway.yml")["providers"]
    assert [p["type"] for p in providers] == ["file"]
    dashboards_dir = _host_path(grafana, providers[0]["options"]["path"])
    assert dashboards_dir.resolve() == DASHBOARD.parent.resolve()
    home = _environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _host_path(grafana, home).resolve() == DASHBOARD.resolve()


def test_grafana_allows_anonymous_viewers_on_3000() -> None:
    grafana = _service("grafana")
    environment = _environment(grafana)
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert _published_ports(grafana) == {3000: 3000}
