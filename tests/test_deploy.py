"""Deployment artefacts: the Dockerfile, its health check, and the Helm chart.

No Docker engine and no Kubernetes cluster are available here, so the checks are:
hadolint on the Dockerfile; the image's entrypoint commands run from the installed package;
the role-aware health check against a real local HTTP server; and the chart linted and
rendered by the real ``helm`` binary (fetched into the venv by ``make``), its manifests
parsed with PyYAML, validated against the Kubernetes OpenAPI schemas
(kubernetes-validate) and checked for what the service needs (grace period, security
context, probes, one KEDA lag trigger per priority stream, no secret literals).
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streamworker.keyspace import PRIORITIES, Keyspace
from streamworker.registry import default_registry, load_handler_modules
from streamworker.scheduler.schedules import load_schedules
from streamworker.settings import _VARIABLES, Settings
from tests.conftest import worker_env

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "streamworker"
EVERYTHING_ON = CHART / "ci" / "everything-on-values.yaml"
BIN = Path(sys.executable).parent
HELM = BIN / "helm"
KUBE_VERSION = "1.30.0"
CRD_APIS = ("keda.sh/v1alpha1", "monitoring.coreos.com/v1")

# Secrets the service reads; none may ever be rendered as a literal value.
SECRET_VARIABLES = {
    "REDIS_URL",
    "API_TOKENS",
    "WEBHOOK_SECRET",
    "NOTIFICATION_API_KEY",
    "SMTP_USERNAME",
    "SMTP_PASSWORD",
}

# Roles the image runs (`docker run IMAGE <role>`); all three are on main.
IMAGE_ROLES = ["worker", "api", "scheduler"]


def _tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make {path.relative_to(ROOT)}` or `make test`")
    return path


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


# -- Dockerfile -------------------------------------------------------------------------


def _dockerfile_stages() -> list[list[str]]:
    """Instructions (continuation lines joined) grouped by build stage."""
    stages: list[list[str]] = []
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_is_hadolint_clean() -> None:
    result = run(_tool("hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_dockerfile_runtime_stage() -> None:
    stages = _dockerfile_stages()
    assert len(stages) == 2, "builder and runtime stages"
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in (ROOT / "Dockerfile").read_text()
    assert all(stage[0].startswith("FROM ${PYTHON_IMAGE} AS ") for stage in stages)
    runtime = stages[-1]
    instructions = {line.split()[0].upper() for line in runtime}
    assert {"USER", "EXPOSE", "STOPSIGNAL", "HEALTHCHECK", "ENTRYPOINT"} <= instructions
    user = next(line for line in runtime if line.upper().startswith("USER "))
    uid = user.split()[1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root uid (runAsNonRoot can verify it)"
    assert "EXPOSE 8086" in runtime
    assert "STOPSIGNAL SIGTERM" in runtime
    assert 'ENTRYPOINT ["streamworker"]' in runtime
    # Nothing is built or installed in the runtime stage: no package manager, no compiler.
    runs = " ".join(line for line in runtime if line.upper().startswith("RUN "))
    for tool in ("apt-get", "apk", "pip install", "gcc", "build-essential"):
        assert tool not in runs
    assert any("--from=builder" in line for line in runtime)


def test_image_contains_every_installed_package() -> None:
    """The builder copies each top-level package the project installs, and .dockerignore
    lets them (and nothing like .venv or .git) into the build context."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    builder = " ".join(_dockerfile_stages()[0])
    ignore = [
        line for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] not in "#"
    ]
    for package in packages:
        assert f"COPY {package} ./{package}" in builder
        assert f"!{package}" in ignore
    assert ignore[0] == "**", "everything is excluded first, then the sources let in"
    assert not any(line.startswith("!") and (".venv" in line or ".git" in line) for line in ignore)
    assert pyproject["project"]["scripts"]["streamworker"] == "streamworker.cli:main"


def test_builder_reads_dependencies_from_pyproject(tmp_path: Path) -> None:
    """Run the builder's dependency step (its python -c) on the real pyproject.toml."""
    step = next(line for line in _dockerfile_stages()[0] if "tomllib" in line)
    tokens = shlex.split(step.removeprefix("RUN "))
    code = tokens[tokens.index("-c") + 1]
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    result = run(sys.executable, "-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    wanted = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert (tmp_path / "requirements.txt").read_text().splitlines() == wanted
    assert "-r requirements.txt" in step and "--only-binary=:all:" in step


@pytest.mark.parametrize("role", IMAGE_ROLES)
def test_entrypoint_role_runs_from_installed_package(role: str) -> None:
    result = run(_tool("streamworker"), role, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_default_command_is_a_known_role() -> None:
    cmd = next(line for line in _dockerfile_stages()[-1] if line.upper().startswith("CMD "))
    assert json.loads(cmd[4:]) == ["worker"]
    assert "worker" in IMAGE_ROLES


# -- docker/healthcheck.py --------------------------------------------------------------


def _healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "docker" / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = type(self).status if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    handler = type("Health", (_Health,), {"status": 200})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


IN_IMAGE = ["/opt/streamworker/bin/python", "/opt/streamworker/bin/streamworker"]


def test_healthcheck_finds_the_role_behind_an_init() -> None:
    hc = _healthcheck()
    assert hc.streamworker_argv([["/sbin/docker-init", "--"], [*IN_IMAGE, "api"]]) == ["api"]
    assert hc.streamworker_argv([["sleep", "1"]]) is None


def test_healthcheck_url_per_role() -> None:
    hc = _healthcheck()
    plain = Settings(redis_url="redis://h:6379/0")
    with_metrics = Settings(redis_url="redis://h:6379/0", metrics_port=9091, port=8000)
    assert hc.health_url(["api"], plain) == "http://127.0.0.1:8086/healthz"
    assert hc.health_url(["api", "--port", "9000"], plain) == "http://127.0.0.1:9000/healthz"
    assert hc.health_url(["api", "--port=9001"], plain) == "http://127.0.0.1:9001/healthz"
    assert hc.health_url(["api"], with_metrics) == "http://127.0.0.1:8000/healthz"
    assert hc.health_url(["worker"], with_metrics) == "http://127.0.0.1:9091/healthz"
    assert hc.health_url(["scheduler"], with_metrics) == "http://127.0.0.1:9091/healthz"
    assert hc.health_url(["worker", "--concurrency", "3"], plain) is None
    assert hc.health_url(["stats"], with_metrics) is None


def test_healthcheck_probes_a_real_endpoint(
    health_server: http.server.HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    hc = _healthcheck()
    port = str(health_server.server_address[1])
    env = {"METRICS_PORT": port}
    assert hc.check([[*IN_IMAGE, "worker"]], env) == 0
    assert "healthy:" in capsys.readouterr().out
    assert hc.check([[*IN_IMAGE, "api", "--port", port]], {}) == 0

    health_server.RequestHandlerClass.status = 503  # type: ignore[attr-defined]
    assert hc.check([[*IN_IMAGE, "worker"]], env) == 1
    assert "answered 503" in capsys.readouterr().out


def test_healthcheck_reports_clear_failures(capsys: pytest.CaptureFixture[str]) -> None:
    hc = _healthcheck()
    assert hc.check([[*IN_IMAGE, "worker"]], {"METRICS_PORT": str(_closed_port())}) == 1
    assert "unreachable" in capsys.readouterr().out
    assert hc.check([[*IN_IMAGE, "worker"]], {"METRICS_PORT": "nope"}) == 1
    assert "METRICS_PORT" in capsys.readouterr().out
    assert hc.check([[*IN_IMAGE, "api", "--port", "x"]], {}) == 1
    assert "--port is not a number" in capsys.readouterr().out
    assert hc.check([["sleep", "1"]], {}) == 1
    assert "no streamworker process" in capsys.readouterr().out
    # A role without an endpoint is healthy while its process lives.
    assert hc.check([[*IN_IMAGE, "worker"]], {}) == 0
    assert "no health endpoint for worker" in capsys.readouterr().out


def _closed_port() -> int:
    """A port nothing listens on: bound, noted, closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize("role", ["api", "worker", "scheduler"])
def test_healthcheck_against_a_real_process(role: str, settings: Settings) -> None:
    """Each role as the image runs it: the check reads the role (and port) from the
    process's real /proc cmdline, probes its /healthz, and fails once it stopped."""
    hc = _healthcheck()
    port = str(_closed_port())
    if role == "api":
        args, env = ["api", "--port", port, "--host", "127.0.0.1"], {}
    else:
        args, env = [role], {"METRICS_PORT": port}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [BIN / "streamworker", *args],
            env=worker_env(settings, API_TOKENS="deploy-test-token", **env),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        proc_cmdline = Path(f"/proc/{proc.pid}/cmdline")
        try:
            deadline = time.monotonic() + 90  # generous: a loaded 2-core machine
            # Re-read each time: right after fork the cmdline is not the exec'd one yet.
            while hc.check([_split_cmdline(proc_cmdline.read_bytes())], env) != 0:
                log.seek(0)
                assert proc.poll() is None, log.read().decode(errors="replace")
                assert time.monotonic() < deadline, f"{role} never answered /healthz"
                time.sleep(0.2)
            cmdline = _split_cmdline(proc_cmdline.read_bytes())
            assert hc.streamworker_argv([cmdline]) == args
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        assert hc.check([cmdline], env) == 1, "a stopped process is unhealthy"


def _split_cmdline(raw: bytes) -> list[str]:
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


# -- Helm chart -------------------------------------------------------------------------


def helm_template(
    *,
    values: Sequence[Path] = (),
    sets: Sequence[str] = (),
    api_versions: Sequence[str] = (),
    chart: Path = CHART,
) -> subprocess.CompletedProcess[str]:
    args: list[str | Path] = [_tool("helm"), "template", "rel", chart, "--namespace", "tasks"]
    args += ["--kube-version", KUBE_VERSION]
    for path in values:
        args += ["-f", path]
    for item in sets:
        args += ["--set", item]
    for api in api_versions:
        args += ["--api-versions", api]
    return run(*args)


def render(**kwargs: Any) -> list[dict[str, Any]]:
    result = helm_template(**kwargs)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(**kwargs: Any) -> str:
    result = helm_template(**kwargs)
    assert result.returncode != 0, "rendering should have failed"
    return result.stderr


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def deployment(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    (found,) = [
        d
        for d in by_kind(docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


def container(dep: dict[str, Any]) -> dict[str, Any]:
    (only,) = dep["spec"]["template"]["spec"]["containers"]
    return only


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def everything_on() -> list[dict[str, Any]]:
    return render(values=[EVERYTHING_ON], api_versions=CRD_APIS)


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def all_docs() -> list[dict[str, Any]]:
    return everything_on()


@pytest.mark.parametrize("values", [[], [EVERYTHING_ON]], ids=["defaults", "everything-on"])
def test_chart_lints_clean(values: list[Path]) -> None:
    args: list[str | Path] = [_tool("helm"), "lint", "--strict", CHART]
    for path in values:
        args += ["-f", path]
    result = run(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_chart_matches_the_image_and_the_package(default_docs: list[dict[str, Any]]) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == version, "the default image tag is the package version"
    user = next(line for line in _dockerfile_stages()[-1] if line.upper().startswith("USER "))
    uid, gid = (int(part) for part in user.split()[1].split(":"))
    pod = deployment(default_docs, "worker")["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (uid, gid)
    port = next(line for line in _dockerfile_stages()[-1] if line.startswith("EXPOSE "))
    assert yaml.safe_load((CHART / "values.yaml").read_text())["api"]["port"] == int(port[7:])


def test_too_old_kubernetes_is_refused() -> None:
    result = run(_tool("helm"), "template", "rel", CHART, "--kube-version", "1.24.0")
    assert result.returncode != 0
    assert "chart requires kubeVersion" in result.stderr


def test_defaults_render_only_the_worker(default_docs: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in default_docs)
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "ServiceAccount"]
    dep = deployment(default_docs, "worker")
    assert dep["spec"]["replicas"] == 2
    assert container(dep)["args"] == ["worker"]


def test_everything_on_renders_every_part(all_docs: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in all_docs}
    assert {
        "ConfigMap",
        "ServiceAccount",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceMonitor",
    } <= kinds
    assert "HorizontalPodAutoscaler" not in kinds, "KEDA owns scaling: no second autoscaler"
    assert "Secret" not in kinds, "the chart never creates a Secret"
    for role in ("worker", "scheduler", "api"):
        assert container(deployment(all_docs, role))["args"][0] == role
    assert "replicas" not in deployment(all_docs, "worker")["spec"], "the autoscaler owns it"


@pytest.mark.parametrize("which", ["defaults", "everything-on", "hpa"])
def test_manifests_match_the_kubernetes_schemas(which: str, request: pytest.FixtureRequest) -> None:
    if which == "hpa":
        sets = ["worker.autoscaling.enabled=true", "api.enabled=true"]
        sets.append("worker.autoscaling.hpa.behavior.scaleDown.stabilizationWindowSeconds=600")
        docs = render(sets=sets)
        assert by_kind(docs, "HorizontalPodAutoscaler")[0]["spec"]["behavior"]
    else:
        docs = request.getfixturevalue("default_docs" if which == "defaults" else "all_docs")
    checked = 0
    for doc in docs:
        if doc["apiVersion"].split("/")[0] in {"keda.sh", "monitoring.coreos.com"}:
            continue  # CRDs: no schema ships with kubernetes-validate; asserted below
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        checked += 1
    assert checked >= 4


def test_worker_grace_outlasts_shutdown_grace(all_docs: list[dict[str, Any]]) -> None:
    config = by_kind(all_docs, "ConfigMap")[0]["data"]
    shutdown = float(config["SHUTDOWN_GRACE_SECONDS"])
    for role in ("worker", "scheduler", "api"):
        grace = deployment(all_docs, role)["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"
        ]
        assert grace > shutdown


@pytest.mark.parametrize(
    "sets",
    [
        ["worker.terminationGracePeriodSeconds=25"],
        ["worker.terminationGracePeriodSeconds=20"],
        ["config.SHUTDOWN_GRACE_SECONDS=40"],
        ["config.SHUTDOWN_GRACE_SECONDS=34.5", "worker.terminationGracePeriodSeconds=34"],
        ["api.enabled=true", "api.terminationGracePeriodSeconds=10"],
        ["scheduler.enabled=true", "scheduler.terminationGracePeriodSeconds=5"],
    ],
)
def test_too_small_grace_period_fails_rendering(sets: list[str]) -> None:
    error = render_error(sets=sets)
    assert "terminationGracePeriodSeconds" in error
    assert "must be larger than config.SHUTDOWN_GRACE_SECONDS" in error


def test_restricted_security_context(all_docs: list[dict[str, Any]]) -> None:
    for role in ("worker", "scheduler", "api"):
        pod = deployment(all_docs, role)["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        c = container(deployment(all_docs, role))
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        # The only writable path: an emptyDir at /tmp; anything else is mounted read-only.
        volumes = {v["name"]: v for v in pod["volumes"]}
        writable = [m for m in c["volumeMounts"] if not m.get("readOnly")]
        assert [m["mountPath"] for m in writable] == ["/tmp"]
        assert "emptyDir" in volumes[writable[0]["name"]]
        assert all("emptyDir" not in volumes[m["name"]] for m in c["volumeMounts"][1:])
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    (sa,) = by_kind(all_docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False


def test_worker_probes_health_endpoint_on_metrics_port(all_docs: list[dict[str, Any]]) -> None:
    c = container(deployment(all_docs, "worker"))
    (port,) = c["ports"]
    assert port["name"] == "metrics"
    assert env_of(c)["METRICS_PORT"]["value"] == str(port["containerPort"])
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    api = container(deployment(all_docs, "api"))
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert env_of(api)["PORT"]["value"] == str(api["ports"][0]["containerPort"])
    scheduler = container(deployment(all_docs, "scheduler"))
    assert scheduler["livenessProbe"]["httpGet"]["port"] == "metrics"


def test_scheduler_without_metrics_port_has_no_http_probes() -> None:
    docs = render(sets=["scheduler.enabled=true", "scheduler.metricsPort=null"])
    c = container(deployment(docs, "scheduler"))
    assert "livenessProbe" not in c and "ports" not in c and "METRICS_PORT" not in env_of(c)


def test_consumer_name_is_the_pod_name(all_docs: list[dict[str, Any]]) -> None:
    for role in ("worker", "scheduler", "api"):
        consumer = env_of(container(deployment(all_docs, role)))["STREAMWORKER_CONSUMER"]
        assert consumer["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


@pytest.mark.parametrize("which", ["defaults", "everything-on"])
def test_no_secret_literals(which: str, request: pytest.FixtureRequest) -> None:
    docs = request.getfixturevalue("default_docs" if which == "defaults" else "all_docs")
    assert not by_kind(docs, "Secret")
    config = by_kind(docs, "ConfigMap")[0]["data"]
    assert not SECRET_VARIABLES & set(config)
    secret_name = "streamworker-prod" if which == "everything-on" else "rel-streamworker"
    for dep in by_kind(docs, "Deployment"):
        is_api = container(dep)["args"][0] == "api"
        required = {"REDIS_URL", "API_TOKENS"} if is_api else {"REDIS_URL"}
        env = env_of(container(dep))
        assert set(env) >= SECRET_VARIABLES
        for name in SECRET_VARIABLES:
            assert "value" not in env[name], f"{name} must come from a Secret"
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret_name
            required = (
                {"REDIS_URL", "API_TOKENS"} if "api" in container(dep)["args"] else {"REDIS_URL"}
            )
            assert ref["optional"] is (name not in required), f"{name} required: {required}"
    # KEDA reads the Redis password from the same Secret, by reference.
    for auth in by_kind(docs, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert set(ref) == {"parameter", "name", "key"} and ref["name"] == secret_name


def test_rendered_settings_are_valid_for_the_service(all_docs: list[dict[str, Any]]) -> None:
    """The ConfigMap plus the container's literal env parse with the service's own
    Settings, and every ConfigMap key is a variable the service knows."""
    known = {var.name for var in _VARIABLES}
    config = by_kind(all_docs, "ConfigMap")[0]["data"]
    assert set(config) <= known, set(config) - known
    for role in ("worker", "scheduler", "api"):
        env = dict(config)
        env.update(
            {
                name: e["value"]
                for name, e in env_of(container(deployment(all_docs, role))).items()
                if "value" in e and name in known
            }
        )
        settings = Settings.from_env(
            env | {"REDIS_URL": "redis://redis:6379/0", "STREAMWORKER_CONSUMER": "pod-0"}
        )
        assert settings.shutdown_grace_seconds == float(config["SHUTDOWN_GRACE_SECONDS"])
    assert config["MAX_PAYLOAD_BYTES"] == "1048576", "no float notation for large integers"


def test_keda_has_one_lag_trigger_per_priority_stream(all_docs: list[dict[str, Any]]) -> None:
    (scaled,) = by_kind(all_docs, "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment(all_docs, "worker")["metadata"]["name"]
    assert spec["minReplicaCount"] == 0, "scale to zero when chosen"
    assert spec["maxReplicaCount"] == 20
    config = by_kind(all_docs, "ConfigMap")[0]["data"]
    keyspace = Keyspace(config["STREAMWORKER_PREFIX"])
    triggers = spec["triggers"]
    assert [t["metadata"]["stream"] for t in triggers] == [
        keyspace.family(p).stream for p in PRIORITIES
    ]
    (auth,) = by_kind(all_docs, "TriggerAuthentication")
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "redis-streams"
        assert meta["consumerGroup"] == config["STREAMWORKER_GROUP"]
        assert int(meta["lagCount"]) >= 1
        assert int(meta["activationLagCount"]) >= 0
        assert "pendingEntriesCount" not in meta and "streamLength" not in meta
        assert meta["address"] == "redis-master.data.svc:6379"
        assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata is strings"
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]


def test_keda_stream_length_metric() -> None:
    sets = [
        "worker.autoscaling.enabled=true",
        "worker.autoscaling.engine=keda",
        "worker.autoscaling.minReplicas=0",
        "worker.autoscaling.keda.redis.address=r:6379",
        "worker.autoscaling.keda.metric=streamLength",
    ]
    (scaled,) = by_kind(render(sets=sets), "ScaledObject")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    targets = values["worker"]["autoscaling"]["keda"]["triggers"]
    for priority, trigger in zip(PRIORITIES, scaled["spec"]["triggers"], strict=True):
        meta = trigger["metadata"]
        # Without consumerGroup KEDA reads XLEN; with it, it would read pending or lag.
        assert "consumerGroup" not in meta and "lagCount" not in meta
        assert meta["streamLength"] == str(targets[priority]["streamLength"])
        assert meta["activationLagCount"] == str(targets[priority]["activationLagCount"])


@pytest.mark.anyio
async def test_redis_lag_can_be_unknown_while_stream_length_is_the_backlog(
    redis: Any, prefix: str
) -> None:
    """Why the chart offers metric streamLength: once the newest delivered entry is acked
    and deleted (as the worker does) while an older one is still pending, Redis reports the
    group's lag as NULL although an entry waits, and KEDA reads that as 0 (no wake-up from
    zero). XLEN stays exact: pending + waiting."""
    stream = Keyspace(prefix).family("high").stream
    await redis.xgroup_create(stream, "g", id="0", mkstream=True)
    await redis.xadd(stream, {"task_type": "t"})
    newest = await redis.xadd(stream, {"task_type": "t"})
    await redis.xreadgroup("g", "c", {stream: ">"}, count=2)
    await redis.xack(stream, "g", newest)
    await redis.xdel(stream, newest)
    await redis.xadd(stream, {"task_type": "t"})  # waiting, not delivered yet
    (group,) = await redis.xinfo_groups(stream)
    assert group["pending"] == 1
    assert group["lag"] is None
    assert await redis.xlen(stream) == 2
    await redis.xreadgroup("g", "c", {stream: ">"}, count=1)
    (group,) = await redis.xinfo_groups(stream)
    assert group["lag"] == 0, "a read makes the lag known again"


def test_autoscaling_auto_picks_keda_when_the_cluster_has_it() -> None:
    sets = ["worker.autoscaling.enabled=true", "worker.autoscaling.keda.redis.address=r:6379"]
    with_keda = render(sets=sets, api_versions=["keda.sh/v1alpha1"])
    assert by_kind(with_keda, "ScaledObject") and not by_kind(with_keda, "HorizontalPodAutoscaler")
    assert not by_kind(with_keda, "TriggerAuthentication"), "no credentials configured"
    without = render(sets=sets)
    assert not by_kind(without, "ScaledObject")
    (hpa,) = by_kind(without, "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] == 1
    assert "replicas" not in deployment(without, "worker")["spec"]


def test_api_needs_its_tokens_key() -> None:
    error = render_error(sets=["api.enabled=true", "secrets.keys.API_TOKENS=null"])
    assert "secrets.keys.API_TOKENS is required with api.enabled" in error


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["worker.autoscaling.minReplicas=0"], "cannot scale to zero"),
        (["worker.autoscaling.engine=keda"], "keda.redis.address is required"),
        (["worker.autoscaling.minReplicas=5", "worker.autoscaling.maxReplicas=2"], "exceed"),
    ],
)
def test_bad_autoscaling_choices_fail_rendering(sets: list[str], message: str) -> None:
    assert message in render_error(sets=["worker.autoscaling.enabled=true", *sets])


def test_worker_disruption_budget_and_spread(all_docs: list[dict[str, Any]]) -> None:
    dep = deployment(all_docs, "worker")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    (pdb,) = [
        p
        for p in by_kind(all_docs, "PodDisruptionBudget")
        if p["metadata"]["name"] == dep["metadata"]["name"]
    ]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()


def test_api_service_targets_api_pods(all_docs: list[dict[str, Any]]) -> None:
    api = deployment(all_docs, "api")
    (service,) = [
        s for s in by_kind(all_docs, "Service") if s["metadata"]["name"] == api["metadata"]["name"]
    ]
    assert (
        service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    )
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http" and port["port"] == 8086


@pytest.mark.parametrize(
    ("sets", "api_versions"),
    [
        (["metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true"], []),
        ([], ["monitoring.coreos.com/v1"]),
    ],
    ids=["value-but-no-crd", "crd-but-no-value"],
)
def test_monitoring_needs_both_the_crd_and_the_value(
    sets: list[str], api_versions: list[str]
) -> None:
    docs = render(sets=sets, api_versions=api_versions)
    assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PrometheusRule")
    assert not by_kind(docs, "Service"), "no headless metrics Service either"


def test_service_monitor_scrapes_workers_and_api(all_docs: list[dict[str, Any]]) -> None:
    (monitor,) = by_kind(all_docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics", "http"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = by_kind(all_docs, "Service")
    for service in services:
        assert selector.items() <= service["metadata"]["labels"].items()
    # Workers and schedulers have no traffic Service: headless ones expose their metrics port.
    for role in ("worker", "scheduler"):
        (headless,) = [s for s in services if s["metadata"]["name"].endswith(f"-{role}-metrics")]
        assert headless["spec"]["clusterIP"] == "None"
        pod = deployment(all_docs, role)["spec"]["template"]
        assert headless["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        (port,) = container(deployment(all_docs, role))["ports"]
        assert headless["spec"]["ports"][0]["port"] == port["containerPort"]


RULES = """\
groups:
  - name: streamworker
    rules:
      - alert: TaskQueueDepthHigh
        expr: sum(task_queue_size) > 1000
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: "Backlog above 1000 ({{ $value }})"
"""


@pytest.fixture
def chart_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "streamworker"
    shutil.copytree(CHART, copy)
    return copy


def test_prometheus_rule_takes_groups_from_the_rules_file(chart_copy: Path) -> None:
    rules_file = chart_copy / "files" / "prometheus-rules.yaml"
    if not rules_file.exists():  # owned by the observability work; a sample stands in
        rules_file.parent.mkdir(exist_ok=True)
        rules_file.write_text(RULES)
    docs = render(values=[EVERYTHING_ON], api_versions=CRD_APIS, chart=chart_copy)
    (rule,) = by_kind(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(rules_file.read_text())["groups"]
    assert rule["spec"]["groups"][0]["rules"]


def test_prometheus_rule_without_rules_file_renders_nothing(chart_copy: Path) -> None:
    (chart_copy / "files" / "prometheus-rules.yaml").unlink(missing_ok=True)
    docs = render(values=[EVERYTHING_ON], api_versions=CRD_APIS, chart=chart_copy)
    assert not by_kind(docs, "PrometheusRule")
    assert by_kind(docs, "ServiceMonitor")


def test_broken_rules_file_fails_clearly(chart_copy: Path) -> None:
    rules_file = chart_copy / "files" / "prometheus-rules.yaml"
    rules_file.parent.mkdir(exist_ok=True)
    rules_file.write_text("alerts: []\n")
    error = render_error(values=[EVERYTHING_ON], api_versions=CRD_APIS, chart=chart_copy)
    assert "has no rule groups" in error


def test_schedules_from_values_load_in_the_scheduler(
    all_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The rendered schedules file is what the scheduler's own loader accepts, and every
    role gets it at SCHEDULES_FILE from a read-only mount."""
    (config_map,) = [
        d for d in by_kind(all_docs, "ConfigMap") if d["metadata"]["name"].endswith("-schedules")
    ]
    path = tmp_path / "schedules.yaml"
    path.write_text(config_map["data"]["schedules.yaml"])
    load_handler_modules(("handlers",))
    settings = Settings(redis_url="redis://r:6379/0", schedules_file=str(path))
    schedules = {s.name: s for s in load_schedules(settings, default_registry)}
    nightly = schedules["nightly-test-notification"]
    assert (nightly.cron, nightly.timezone, nightly.misfire) == (
        "0 3 * * *",
        "Europe/Berlin",
        "run_once",
    )
    for role in ("worker", "scheduler", "api"):
        c = container(deployment(all_docs, role))
        mount_path = env_of(c)["SCHEDULES_FILE"]["value"].rsplit("/", 1)[0]
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == mount_path]
        assert mount["readOnly"] is True


def test_grafana_dashboard_config_map(chart_copy: Path) -> None:
    dashboard = chart_copy / "files" / "grafana-dashboard.json"
    if not dashboard.exists():  # owned by the observability work; a sample stands in
        dashboard.parent.mkdir(exist_ok=True)
        dashboard.write_text(json.dumps({"title": "streamworker", "panels": []}))
    docs = render(values=[EVERYTHING_ON], api_versions=CRD_APIS, chart=chart_copy)
    (config_map,) = [
        d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["streamworker.json"]) == json.loads(dashboard.read_text())


@pytest.mark.parametrize(
    ("item", "where"),
    [
        ("worker.replicas=-1", "/worker/replicas"),
        ("api.replicas=-3", "/api/replicas"),
        ("config.WORKER_COUNT=0", "/config/WORKER_COUNT"),
        ("config.LOG_LEVEL=loud", "/config/LOG_LEVEL"),
        ("config.SHUTDOWN_GRACE_SECONDS=-1", "/config/SHUTDOWN_GRACE_SECONDS"),
        ("config.REDIS_URL=redis://user:pw@redis:6379", "REDIS_URL"),
        ("config.API_TOKENS=abc", "API_TOKENS"),
        ("extraEnv[0].name=SMTP_PASSWORD,extraEnv[0].value=hunter2", "/extraEnv/0"),
        ("wroker.replicas=2", "wroker"),
        ("worker.autoscaling.engine=magic", "/worker/autoscaling/engine"),
        ("worker.autoscaling.keda.redis.address=redis://r:6379", "redis/address"),
        ("worker.autoscaling.keda.triggers.high.lagCount=0", "triggers/high/lagCount"),
        ("worker.metricsPort=70000", "/worker/metricsPort"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("scheduler.schedules[0].name=x", "/scheduler/schedules/0"),
        ("config.SCHEDULES_FILE=/x.yaml", "SCHEDULES_FILE"),
    ],
)
def test_schema_rejects_bad_values(item: str, where: str) -> None:
    error = render_error(sets=[item])
    assert "don't meet the specifications of the schema" in error
    assert where in error


def test_notes_tell_how_to_submit_and_read_stats() -> None:
    args: list[str | Path] = [_tool("helm"), "install", "rel", CHART, "--dry-run=client"]
    args += ["--namespace", "tasks", "-o", "json", "--set", "api.enabled=true"]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    notes = json.loads(result.stdout)["info"]["notes"]
    assert "/api/v1/tasks/submit" in notes
    assert "Authorization: Bearer" in notes
    assert "streamworker stats" in notes
    assert "create secret generic rel-streamworker" in notes
    assert "WARNING" not in notes


def test_notes_warn_about_scale_to_zero_on_lag() -> None:
    args: list[str | Path] = [_tool("helm"), "install", "rel", CHART, "--dry-run=client"]
    args += ["-o", "json", "-f", EVERYTHING_ON]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    notes = json.loads(result.stdout)["info"]["notes"]
    assert "WARNING: minReplicas is 0 with metric lag" in notes
    args += ["--set", "worker.autoscaling.keda.metric=streamLength"]
    notes = json.loads(run(*args).stdout)["info"]["notes"]
    assert "WARNING" not in notes and "length (lag + pending)" in notes


def test_yaml_is_yamllint_clean() -> None:
    result = run(_tool("yamllint"), "--strict", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "partitioning", ["config.STREAM_PARTITIONS=6", "config.REDIS_CLUSTER=true"]
)
def test_keda_refuses_partitioned_streams(partitioning: str) -> None:
    sets = ["worker.autoscaling.enabled=true", "worker.autoscaling.keda.redis.address=r:6379"]
    error = render_error(sets=[*sets, partitioning], api_versions=["keda.sh/v1alpha1"])
    assert "worker.autoscaling.engine=hpa" in error
    hpa = render(sets=[*sets, partitioning, "worker.autoscaling.engine=hpa"])
    assert by_kind(hpa, "HorizontalPodAutoscaler")
