"""The Helm chart in deploy/helm/llm-tool-gateway, rendered and checked without a cluster.

Helm's own template engine renders it (``helm-python-sdk`` binds Helm's Go SDK; no ``helm`` binary is
needed), Helm's linter lints it, every rendered object is validated against the Kubernetes OpenAPI schemas
that ``kubernetes-validate`` ships, for the oldest and newest Kubernetes the chart supports, and checkov scans
the manifests. Then the manifests are compared with the code they deploy: the rendered gateway.yaml must load
with ``gateway.config.parse_config`` given only the environment the pod gets, the probes, port and grace
period must match the gateway's endpoints and config, and the pod must run as the Dockerfile's user.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from gateway.config import GatewayConfig, parse_config
from gateway.tools.registry import ToolRegistry

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "llm-tool-gateway"
DOCKERFILE = ROOT / "Dockerfile"
RELEASE = "gw"
NAMESPACE = "llm-gateway"

# The oldest Kubernetes the chart's kubeVersion admits, and the newest whose schemas kubernetes-validate ships.
_KUBE_FLOOR = re.fullmatch(
    r">=\s*v?(\d+\.\d+\.\d+)(?:-0)?", yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
)
assert _KUBE_FLOOR, "Chart.yaml's kubeVersion is no longer a plain lower bound"
KUBERNETES_VERSIONS = (_KUBE_FLOOR.group(1), kubernetes_validate.utils.latest_version())

# checkov in its own virtualenv: it pins packaging<24, aiohttp<3.15, boto3 and some 70 more packages,
# which in the dev venv would downgrade pytest and hold back the gateway's own dependencies.
CHECKOV_VERSION = "3.3.30"
# JSON with every passed, failed and skipped check; nothing fetched from the vendor's service.
CHECKOV_OPTIONS = ("--framework", "kubernetes", "--output", "json", "--skip-download")

TOOL_MODULE = '''\
from gateway.tools import tool


@tool
def team_directory(name: str) -> str:
    """Look up a colleague.

    Args:
        name: Their name.
    """
    return f"{name}: room 4"
'''

# Every option on: what a team running it for real might set.
FULL_VALUES: dict[str, Any] = {
    "image": {"repository": "registry.example.com/llm-tool-gateway", "tag": "0.1.0"},
    "config": {
        "server": {"port": 9000, "workers": 2, "shutdown_grace_s": 60},
        "upstreams": [
            {
                "name": "vllm",
                "base_url": "http://vllm.models:8000/v1",
                "models": ["qwen"],
                "apiKeySecret": {"name": "upstream-keys", "key": "vllm"},
            },
            {
                "name": "openai",
                "base_url": "https://api.openai.com/v1",
                "models": ["gpt-4.1-mini"],
                "apiKeySecret": {"name": "upstream-keys", "key": "openai"},
            },
        ],
        "tools": {
            "paths": ["/app/tools"],
            "mcp_servers": [
                {
                    "name": "docs",
                    "url": "http://docs-mcp:9000/mcp",
                    "headers": {"Authorization": "Bearer ${DOCS_TOKEN}"},
                }
            ],
        },
    },
    "auth": {
        "apiKeys": [
            {"name": "alice", "secret": {"name": "gateway-keys", "key": "alice"}},
            {"name": "bob", "secret": {"name": "gateway-keys", "key": "bob"}},
        ]
    },
    "extraSecretEnv": [{"name": "DOCS_TOKEN", "secret": {"name": "mcp-tokens", "key": "docs"}}],
    "extraEnv": [{"name": "TZ", "value": "UTC"}],
    "tools": {"files": {"team_directory.py": TOOL_MODULE}},
    "terminationGracePeriodSeconds": 75,
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "networkPolicy": {
        "enabled": True,
        "ingressFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
    },
    "redis": {"auth": {"existingSecret": {"name": "redis-auth", "key": "password"}}},
}

EXTERNAL_REDIS_VALUES: dict[str, Any] = {
    "redis": {"enabled": False, "urlSecret": {"name": "shared-redis", "key": "url"}},
}

SINGLE_POD_VALUES: dict[str, Any] = {
    "replicaCount": 1,
    "autoscaling": {"enabled": False},
    "redis": {"enabled": False},
}

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "full": FULL_VALUES,
    "external-redis": EXTERNAL_REDIS_VALUES,
    "single-pod": SINGLE_POD_VALUES,
}


# --- Rendering ------------------------------------------------------------------------------


def render_files(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path to rendered text, as ``helm template`` would print them."""
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(copy.deepcopy(values or {}), name=RELEASE, namespace=NAMESPACE)


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render_files(values).items()):
        if path.endswith(".yaml"):
            objects.extend(document for document in yaml.safe_load_all(text) if document)
    return objects


@cache
def rendered(scenario: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(SCENARIOS[scenario]))


def objects_of(scenario: str, kind: str) -> list[dict[str, Any]]:
    return [copy.deepcopy(o) for o in rendered(scenario) if o["kind"] == kind]


def one(scenario: str, kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [o for o in objects_of(scenario, kind) if o["metadata"]["name"].endswith(name_suffix or "gateway")]
    assert len(found) == 1, [o["metadata"]["name"] for o in objects_of(scenario, kind)]
    return found[0]


def gateway_container(scenario: str) -> dict[str, Any]:
    containers = one(scenario, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["gateway"]
    container: dict[str, Any] = containers[0]
    return container


def pod_environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the pod would have it, a dummy standing in for each Secret's value."""
    environment: dict[str, str] = {}
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
        else:
            ref = variable["valueFrom"]["secretKeyRef"]
            environment[variable["name"]] = f"dummy-{ref['name']}-{ref['key']}"
    return environment


def gateway_yaml(scenario: str) -> str:
    configmap = one(scenario, "ConfigMap", "-config")
    text: str = configmap["data"]["gateway.yaml"]
    return text


def gateway_config(scenario: str) -> GatewayConfig:
    """The rendered gateway.yaml, loaded with nothing but the environment the pod gets, from where it is mounted."""
    environment = pod_environment(gateway_container(scenario))
    base_dir = PurePosixPath(environment["GATEWAY_CONFIG"]).parent
    return parse_config(gateway_yaml(scenario), "gateway.yaml", environment, base_dir=base_dir)


def render_error(values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    return str(caught.value)


def dockerfile_instructions(keyword: str) -> list[str]:
    """Arguments of the final stage's instructions of one kind, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    final_stage = re.split(r"^FROM\s", text, flags=re.MULTILINE)[-1]
    return re.findall(rf"^{keyword}\s+(.+)$", final_stage, flags=re.MULTILINE)


def exec_form(arguments: str) -> list[str]:
    if arguments.startswith("["):
        return [str(item) for item in json.loads(arguments)]
    return shlex.split(arguments)


# --- Helm: lint, schemas, checkov ------------------------------------------------------------


def test_chart_lints_without_warnings() -> None:
    for values in SCENARIOS.values():
        report = helm.lint(str(CHART), copy.deepcopy(values), strict=True, namespace=NAMESPACE)
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not problems and not report["errors"], report


def test_values_schema_refuses_misspelt_and_malformed_values() -> None:
    assert "'replicas' not allowed" in render_error({"replicas": 3})
    assert "missing property 'key'" in render_error({"auth": {"apiKeys": [{"name": "a", "secret": {"name": "s"}}]}})
    assert "/redis/url" in render_error({"redis": {"enabled": False, "url": "http://redis:6379"}})


def test_chart_version_follows_the_gateway() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"]
    # With no tag set, the image is the appVersion's.
    assert gateway_container("defaults")["image"].endswith(f":{project['version']}")


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_objects_match_the_kubernetes_schema(scenario: str, version: str) -> None:
    """Strict schemas: an unknown or misspelt field is an error, as `kubectl apply --validate=strict` makes it."""
    checked = 0
    for item in rendered(scenario):
        if item["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # a CRD: no schema ships offline; test_service_monitor_scrapes_metrics_on_http checks it
        try:
            kubernetes_validate.validate(item, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{item['kind']} {item['metadata']['name']} (Kubernetes {version}): {exc.message} at {exc.path}"
            )
        checked += 1
    assert checked >= 4


def test_schema_validation_rejects_a_misspelt_field() -> None:
    deployment = one("defaults", "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def checkov_python() -> Path:
    """The interpreter of a virtualenv holding checkov, made once under the project's cache directory."""
    configured = os.environ.get("GATEWAY_CACHE_DIR")
    cache_dir = Path(configured).expanduser() if configured else Path.home() / ".cache" / "llm-tool-gateway"
    venv = cache_dir / "tools" / f"checkov-{CHECKOV_VERSION}"
    python = venv / "bin" / "python"
    complete = venv / ".installed"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".checkov-{CHECKOV_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not complete.is_file():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            requirement = [f"checkov=={CHECKOV_VERSION}"]
            result = subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirement],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                pytest.fail(f"could not install checkov {CHECKOV_VERSION} into {venv}:\n{result.stdout}{result.stderr}")
            complete.touch()
    return python


# The first run installs checkov (a minute or two); later runs take seconds.
@pytest.mark.timeout(900)
def test_checkov_passes_with_every_skip_explained(tmp_path: Path) -> None:
    files = []
    for scenario in SCENARIOS:
        path = tmp_path / f"{scenario}.yaml"
        path.write_text(yaml.safe_dump_all(rendered(scenario), sort_keys=False), encoding="utf-8")
        files.append(str(path))
    result = subprocess.run(
        [str(checkov_python()), "-m", "checkov.main", *CHECKOV_OPTIONS, "--file", *files],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "LOG_LEVEL": "ERROR"},
        timeout=300,
    )
    report = json.loads(result.stdout)
    results = report["results"]
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in results["failed_checks"]]
    assert not failed, failed
    assert result.returncode == 0, result.stderr
    assert len(results["passed_checks"]) > 100
    # Skips come only from the chart's checkov.io/skip annotations, each with its reason.
    skipped = {(c["check_id"], c["check_result"].get("suppress_comment", "")) for c in results["skipped_checks"]}
    assert {check for check, _ in skipped} <= {"CKV_K8S_35", "CKV_K8S_43", "CKV2_K8S_6"}, skipped
    for check, reason in skipped:
        assert len(reason) > 40, (check, reason)


# --- The gateway's config ---------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_rendered_gateway_yaml_loads_with_the_pods_environment(scenario: str) -> None:
    config = gateway_config(scenario)
    assert config.upstreams


def test_gateway_reads_the_config_the_chart_mounts() -> None:
    container = gateway_container("defaults")
    path = pod_environment(container)["GATEWAY_CONFIG"]
    # The Dockerfile's default, which `gateway serve` reads when no --config overrides it.
    assert f"GATEWAY_CONFIG={path}" in shlex.split(" ".join(dockerfile_instructions("ENV")))
    assert container["command"] + container["args"] == ["gateway", "serve"]
    entrypoint = exec_form(dockerfile_instructions("ENTRYPOINT")[-1]) + exec_form(dockerfile_instructions("CMD")[-1])
    assert entrypoint == ["gateway", "serve"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert mount["readOnly"] is True
    directory, _, filename = path.rpartition("/")
    assert mount["mountPath"] == directory
    volume = next(
        v for v in one("defaults", "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"
    )
    assert volume["configMap"]["name"] == one("defaults", "ConfigMap", "-config")["metadata"]["name"]
    assert filename in one("defaults", "ConfigMap", "-config")["data"]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_variable_the_pod_gets_is_used_and_every_secret_is_a_reference(scenario: str) -> None:
    # The parsed document, so that comments do not count.
    text = json.dumps(yaml.safe_load(gateway_yaml(scenario)))
    referenced = set(re.findall(r"\$\{(\w+)", text))
    environment = pod_environment(gateway_container(scenario))
    from_secrets = {
        v["name"] for v in gateway_container(scenario).get("env", []) if "secretKeyRef" in v.get("valueFrom", {})
    }
    assert referenced <= set(environment)
    assert from_secrets <= referenced
    config = gateway_config(scenario)
    for key in config.auth.api_keys:
        assert key.key.startswith("dummy-"), "a gateway key is in the chart's values"
    for upstream in config.upstreams:
        assert upstream.api_key in {""} | {v for k, v in environment.items() if k.startswith("UPSTREAM_API_KEY_")}


def test_gateway_keys_and_upstream_keys_come_from_the_named_secrets() -> None:
    config = gateway_config("full")
    assert {k.name: k.key for k in config.auth.api_keys} == {
        "alice": "dummy-gateway-keys-alice",
        "bob": "dummy-gateway-keys-bob",
    }
    assert {u.name: u.api_key for u in config.upstreams} == {
        "vllm": "dummy-upstream-keys-vllm",
        "openai": "dummy-upstream-keys-openai",
    }
    assert config.tools.mcp_servers[0].headers == {"Authorization": "Bearer dummy-mcp-tokens-docs"}
    assert pod_environment(gateway_container("full"))["TZ"] == "UTC"
    text = gateway_yaml("full")
    assert "dummy" not in text and "apiKeySecret" not in text


def test_default_install_requires_a_gateway_key() -> None:
    """Shared by a team, the gateway is not left open unless the values say so."""
    assert [k.name for k in gateway_config("defaults").auth.api_keys] == ["team"]
    assert "config.server.allow_unauthenticated_public" in render_error({"auth": {"apiKeys": []}})
    open_values = {"auth": {"apiKeys": []}, "config": {"server": {"allow_unauthenticated_public": True}}}
    assert "WARNING" in render_files(open_values)["llm-tool-gateway/templates/NOTES.txt"]
    configmap = next(o for o in render(open_values) if o["kind"] == "ConfigMap")
    # The pod's gateway starts: listening on every interface without keys, as the values said.
    config = parse_config(configmap["data"]["gateway.yaml"], "gateway.yaml", {})
    assert config.server.host == "0.0.0.0" and not config.auth.api_keys


def test_config_keys_the_chart_owns_are_refused() -> None:
    assert "auth.apiKeys" in render_error({"config": {"auth": {"api_keys": ["sk-in-values"]}}})
    assert "redis" in render_error({"config": {"state": {"backend": "memory"}}})


# --- Shared state -----------------------------------------------------------------------------


def max_gateway_pods(scenario: str) -> int:
    hpas = objects_of(scenario, "HorizontalPodAutoscaler")
    if hpas:
        return int(hpas[0]["spec"]["maxReplicas"])
    return int(one(scenario, "Deployment")["spec"]["replicas"])


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_more_than_one_gateway_process_shares_state_in_redis(scenario: str) -> None:
    config = gateway_config(scenario)
    if max_gateway_pods(scenario) > 1 or config.server.workers > 1:
        assert config.state.backend == "redis"
    else:
        assert config.state.backend == "memory"


@pytest.mark.parametrize("scenario", ["defaults", "full"])
def test_redis_url_points_at_the_charts_redis_service(scenario: str) -> None:
    config = gateway_config(scenario)
    url = urlsplit(config.state.redis_url)
    service = one(scenario, "Service", "-redis")
    statefulset = one(scenario, "StatefulSet", "-redis")
    assert url.scheme == "redis"
    assert url.hostname == service["metadata"]["name"]
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    target = next(p["targetPort"] for p in service["spec"]["ports"] if p["port"] == url.port)
    assert target in [p["name"] for p in container["ports"]]


def test_redis_password_comes_from_the_same_secret_for_server_and_gateway() -> None:
    config = gateway_config("full")
    redis_container = one("full", "StatefulSet", "-redis")["spec"]["template"]["spec"]["containers"][0]
    redis_environment = pod_environment(redis_container)
    assert urlsplit(config.state.redis_url).password == redis_environment["REDIS_PASSWORD"]
    args = redis_container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert redis_environment["REDISCLI_AUTH"] == redis_environment["REDIS_PASSWORD"]


def test_external_redis_replaces_the_charts_own() -> None:
    assert not objects_of("external-redis", "StatefulSet")
    config = gateway_config("external-redis")
    assert config.state.backend == "redis"
    assert config.state.redis_url == "dummy-shared-redis-url"
    values = {"redis": {"enabled": False, "url": "redis://redis.shared:6379/3"}}
    configmap = next(o for o in render(values) if o["kind"] == "ConfigMap")
    assert yaml.safe_load(configmap["data"]["gateway.yaml"])["state"]["redis_url"] == "redis://redis.shared:6379/3"


def test_several_replicas_without_redis_are_refused() -> None:
    assert "Redis" in render_error({"redis": {"enabled": False}})
    assert "Redis" in render_error({**SINGLE_POD_VALUES, "config": {"server": {"workers": 2}}})


def test_redis_is_pinned_ephemeral_and_locked_down() -> None:
    statefulset = one("defaults", "StatefulSet", "-redis")
    spec = statefulset["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert re.fullmatch(r"redis:7\.\d+\.\d+-alpine", container["image"]), container["image"]
    assert container["command"] == ["redis-server"]
    args = container["args"]
    assert args[args.index("--save") + 1] == ""
    assert args[args.index("--appendonly") + 1] == "no"
    data = next(m for m in container["volumeMounts"] if m["mountPath"] == "/data")
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == data["name"])
    assert_locked_down(spec, container)
    assert statefulset["spec"]["replicas"] == 1


# --- The gateway's pods -----------------------------------------------------------------------


def assert_locked_down(pod: dict[str, Any], container: dict[str, Any]) -> None:
    context = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True and context["runAsNonRoot"] is True
    assert context["runAsUser"] >= 10000
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_gateway_runs_as_the_dockerfiles_user_on_a_read_only_root(scenario: str) -> None:
    pod = one(scenario, "Deployment")["spec"]["template"]["spec"]
    container = gateway_container(scenario)
    assert_locked_down(pod, container)
    user, _, group = dockerfile_instructions("USER")[-1].partition(":")
    assert container["securityContext"]["runAsUser"] == int(user) == pod["securityContext"]["runAsUser"]
    assert container["securityContext"]["runAsGroup"] == int(group or user)
    # /tmp is the one writable path: tempfile, and PROMETHEUS_MULTIPROC_DIR when workers > 1.
    writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
    assert [m["mountPath"] for m in writable] == ["/tmp"]
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == writable[0]["name"])


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_probes_and_port_match_the_gateway(scenario: str) -> None:
    container = gateway_container(scenario)
    config = gateway_config(scenario)
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": config.server.port, "protocol": "TCP"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = one(scenario, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    pod_labels = one(scenario, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_container_port_follows_server_port() -> None:
    assert gateway_config("full").server.port == 9000
    assert gateway_container("full")["ports"][0]["containerPort"] == 9000


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_streams_can_finish_before_the_pod_is_killed(scenario: str) -> None:
    pod = one(scenario, "Deployment")["spec"]["template"]["spec"]
    container = gateway_container(scenario)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert 1 <= pre_stop <= 15
    grace = gateway_config(scenario).server.shutdown_grace_s
    assert pod["terminationGracePeriodSeconds"] > grace + pre_stop


def test_a_grace_period_too_short_for_the_gateway_is_refused() -> None:
    message = render_error({"terminationGracePeriodSeconds": 30})
    assert "shutdown_grace_s" in message


def test_a_config_change_rolls_the_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = next(o for o in render(values) if o["kind"] == "Deployment")
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    base = checksum({})
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert checksum({}) == base
    assert checksum({"config": {"loop": {"max_rounds": 3}}}) != base
    assert checksum({"tools": {"files": {"extra.py": TOOL_MODULE}}}) != base


def test_tool_files_are_mounted_where_the_config_loads_tools(tmp_path: Path) -> None:
    """The ConfigMap's modules, laid out as the pod sees them under WORKDIR /app, load as tools."""
    container = gateway_container("full")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tools")
    assert mount["mountPath"] == "/app/tools" and mount["readOnly"] is True
    workdir = dockerfile_instructions("WORKDIR")[-1]
    assert workdir == "/app"
    tools = one("full", "ConfigMap", "-tools")
    config = gateway_config("full")
    app = tmp_path / "app"
    (app / "tools").mkdir(parents=True)
    for name, source in tools["data"].items():
        (app / "tools" / name).write_text(source, encoding="utf-8")
    # The pod's paths, as the config names them, moved under this test's stand-in for /app.
    assert config.tools.paths == [mount["mountPath"]]
    local = config.tools.model_copy(
        update={"paths": [str(app / PurePosixPath(p).relative_to(workdir)) for p in config.tools.paths]}
    )
    registry = ToolRegistry.from_config(local)
    try:
        assert registry.names() == ["team_directory"]
    finally:
        registry.close()
    # Without tool files, the image's own tools/ stays in place.
    assert all(m["mountPath"] != "/app/tools" for m in gateway_container("defaults")["volumeMounts"])


def test_tool_file_names_must_be_python_modules() -> None:
    assert "not a Python module file name" in render_error({"tools": {"files": {"../evil.sh": "x"}}})


def test_pods_prefer_different_nodes() -> None:
    deployment = one("defaults", "Deployment")
    affinity = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (preference,) = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    term = preference["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


# --- Scaling and availability -----------------------------------------------------------------


def test_two_replicas_by_default_scaled_by_cpu_from_two_to_ten() -> None:
    deployment = one("defaults", "Deployment")
    hpa = one("defaults", "HorizontalPodAutoscaler")
    # The autoscaler owns the count, so an upgrade never resets it.
    assert "replicas" not in deployment["spec"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    without_hpa = next(o for o in render({"autoscaling": {"enabled": False}}) if o["kind"] == "Deployment")
    assert without_hpa["spec"]["replicas"] == 2


def test_disruption_budget_keeps_one_pod() -> None:
    pdb = one("defaults", "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == one("defaults", "Deployment")["spec"]["selector"]["matchLabels"]
    # One pod alone would make every node drain wait forever.
    assert not objects_of("single-pod", "PodDisruptionBudget")


def test_service_monitor_scrapes_metrics_on_http() -> None:
    assert not objects_of("defaults", "ServiceMonitor")
    monitor = one("full", "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"namespaceSelector", "selector", "endpoints"}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
    assert re.fullmatch(r"\d+[smh]", endpoint["interval"]) and re.fullmatch(r"\d+[smh]", endpoint["scrapeTimeout"])
    service = one("full", "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_network_policies_are_opt_in_and_admit_the_gateway_to_redis() -> None:
    assert not objects_of("defaults", "NetworkPolicy")
    gateway_policy = one("full", "NetworkPolicy")
    redis_policy = one("full", "NetworkPolicy", "-redis")
    gateway_labels = one("full", "Deployment")["spec"]["template"]["metadata"]["labels"]
    redis_labels = one("full", "StatefulSet", "-redis")["spec"]["template"]["metadata"]["labels"]
    assert gateway_policy["spec"]["podSelector"]["matchLabels"].items() <= gateway_labels.items()
    (rule,) = gateway_policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert rule["from"] == FULL_VALUES["networkPolicy"]["ingressFrom"]
    assert redis_policy["spec"]["podSelector"]["matchLabels"].items() <= redis_labels.items()
    (rule,) = redis_policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"].items() <= gateway_labels.items()


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_object_is_in_the_release_namespace(scenario: str) -> None:
    for item in rendered(scenario):
        assert item["metadata"]["namespace"] == NAMESPACE, item["metadata"]["name"]


def test_readme_install_command_names_the_chart() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"^\s*(helm (?:upgrade --install|install) .*)$", readme, flags=re.MULTILINE)
    assert commands
    for command in commands:
        assert "deploy/helm/llm-tool-gateway" in command


@pytest.fixture(autouse=True, scope="module")
def _render_once() -> Iterator[None]:
    yield
    rendered.cache_clear()
