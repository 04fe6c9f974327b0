"""The Helm chart, rendered by Helm's own engine (helm-python-sdk binds Helm's Go SDK; no helm
binary needed), linted, and every manifest validated against Kubernetes' schemas.

Modes: standalone (Deployment + Service + HPA + PDB), and inject, through the example app chart
in helm/examples/ that depends on this chart (file://) and includes its named templates,
as a native sidecar and as a classic container."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from sidecar.config import load_settings
from tests.conftest import REPO
from tests.deploy.dockerfile import stages

CHART = REPO / "helm" / "stigg-sidecar"
EXAMPLE = Path("examples") / "app-with-sidecar"
KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "shop", "shop-prod"
FULLNAME = f"{RELEASE}-stigg-sidecar"
SIDECAR = "stigg-sidecar"

Manifest = dict[str, Any]

# --- representative values ----------------------------------------------------------------

API_KEY_SECRET = {"stigg": {"apiKey": {"existingSecret": "stigg-api-key", "key": "api-key"}}}
AUTH_SECRET = {"auth": {"token": {"existingSecret": "sidecar-auth", "key": "token"}}}

STANDALONE: dict[str, dict[str, Any]] = {
    "standalone-minimal": {**API_KEY_SECRET, **AUTH_SECRET},
    "standalone-full": {
        "stigg": {
            "apiKey": {"value": "server-key-123"},
            "apiUrl": "https://api.stigg.io/graphql",
        },
        "auth": {"token": {"value": "a-long-random-token"}},
        "redis": {"url": {"value": "redis://:pw@redis:6379/0"}},
        "config": {"logging": {"level": "DEBUG"}, "stigg": {"readTimeoutSeconds": 5}},
        "standalone": {
            "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 10},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "stigg-sidecar"}},
                }
            ],
            "imagePullSecrets": [{"name": "regcred"}],
            "podAnnotations": {"example.com/team": "billing"},
        },
        "metrics": {
            "podMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "serviceMonitor": {"enabled": True},
            "dashboard": {"enabled": True},
        },
        "extraEnv": [{"name": "SIDECAR_STIGG_MAX_RETRIES", "value": "3"}],
    },
    "standalone-redis-secret": {
        **API_KEY_SECRET,
        **AUTH_SECRET,
        "redis": {"url": {"existingSecret": "redis-credentials", "key": "url"}},
        "image": {"digest": "sha256:" + "ab" * 32},
    },
    "standalone-redis-sentinel-tls-acl": {
        **API_KEY_SECRET,
        **AUTH_SECRET,
        "redis": {
            "sentinel": {
                "hosts": ["redis-sentinel-0.redis:26379", "redis-sentinel-1.redis:26379"],
                "service": "mymaster",
                "tls": True,
            },
            "minReplicasAck": 1,
            "tls": {"existingSecret": "redis-tls", "certKey": "tls.crt", "keyKey": "tls.key"},
            "credentials": {"existingSecret": "redis-acl"},
        },
    },
    "standalone-unauthenticated": {
        **API_KEY_SECRET,
        "standalone": {"allowUnauthenticated": True, "podDisruptionBudget": {"enabled": False}},
    },
}

INJECT: dict[str, dict[str, Any]] = {
    "inject-native": {},
    "inject-classic": {"inject": {"type": "classic"}},
    "inject-native-socket-redis-monitoring": {
        "unixSocket": {"enabled": True},
        "redis": {"url": {"existingSecret": "redis-credentials"}},
        "auth": {"token": {"value": "loopback-token"}},
        "metrics": {"podMonitor": {"enabled": True}, "dashboard": {"enabled": True}},
        "ports": {"http": 18080, "management": 18081, "mcp": 19090},
    },
    "inject-classic-created-secret": {
        "inject": {"type": "classic"},
        "stigg": {"apiKey": {"existingSecret": "", "value": "server-key-123"}},
    },
    "inject-native-redis-cluster-tls": {
        "redis": {
            "url": {"existingSecret": "redis-cluster-url"},
            "cluster": True,
            "tls": {"existingSecret": "redis-tls"},
        },
    },
    "inject-native-grpc-probes": {
        "auth": {"token": {"value": "loopback-token"}},
        "probes": {"grpc": True},
        "ports": {"grpc": 15051},
    },
}


# --- rendering ----------------------------------------------------------------------------


@dataclass
class Rendered:
    name: str
    mode: str
    manifests: list[Manifest]
    notes: str

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str) -> Manifest:
        [manifest] = self.of_kind(kind)
        return manifest


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def app_chart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example app chart with this chart vendored, as `helm dependency update` does."""
    root = tmp_path_factory.mktemp("helm") / "helm"
    shutil.copytree(REPO / "helm", root, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    helm.dependency_update(root / EXAMPLE)
    return root / EXAMPLE


@pytest.fixture(scope="module")
def app_chart(app_chart_dir: Path) -> Iterator[helm.Chart]:
    with helm.Chart.load(app_chart_dir) as loaded:
        assert [d["name"] for d in loaded.dependencies] == [SIDECAR]
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any], name: str, mode: str) -> Rendered:
    chart.validate_schema(values)  # `helm install` does this before rendering
    manifests: list[Manifest] = []
    notes = ""
    for path, text in chart.render(values, name=RELEASE, namespace=NAMESPACE).items():
        if path.endswith("NOTES.txt"):
            notes += text
            continue
        manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(name, mode, manifests, notes)


def render_scenario(chart: helm.Chart, app_chart: helm.Chart, scenario: str) -> Rendered:
    if scenario in STANDALONE:
        return render(chart, STANDALONE[scenario], scenario, "standalone")
    return render(app_chart, {SIDECAR: INJECT[scenario]}, scenario, "inject")


ALL = [*STANDALONE, *INJECT]


@pytest.fixture(scope="module")
def rendered(chart: helm.Chart, app_chart: helm.Chart) -> dict[str, Rendered]:
    return {scenario: render_scenario(chart, app_chart, scenario) for scenario in ALL}


def pod_spec(workload: Manifest) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def sidecar_of(spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Which list holds the sidecar ("initContainers" or "containers"), and the container."""
    found = [
        (where, c)
        for where in ("initContainers", "containers")
        for c in spec.get(where) or []
        if c["image"].startswith("ghcr.io/stigg-sidecar/")
    ]
    assert len(found) == 1, found
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


# --- every mode renders, lints and validates ----------------------------------------------


def check_prometheus_operator_shape(manifest: Manifest) -> None:
    """PodMonitor/ServiceMonitor are CRDs that kubernetes-validate has no schema for."""
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(manifest) == {"apiVersion", "kind", "metadata", "spec"}
    spec = manifest["spec"]
    endpoints_key = {"PodMonitor": "podMetricsEndpoints", "ServiceMonitor": "endpoints"}
    assert set(spec) == {"selector", endpoints_key[manifest["kind"]]}
    assert spec["selector"]["matchLabels"]
    for endpoint in spec[endpoints_key[manifest["kind"]]]:
        assert set(endpoint) == {"port", "path", "interval", "scrapeTimeout"}
        assert endpoint["path"] == "/metrics"
        for key in ("interval", "scrapeTimeout"):
            assert re.fullmatch(r"([0-9]+(ms|s|m|h))+", endpoint[key])


@pytest.mark.parametrize("scenario", ALL)
def test_renders_and_validates_against_kubernetes_schemas(
    rendered: dict[str, Rendered], scenario: str
) -> None:
    result = rendered[scenario]
    assert result.manifests
    for manifest in result.manifests:
        if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            check_prometheus_operator_shape(manifest)
            continue
        # strict: unknown fields (a misspelt key) fail too
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
    assert result.notes.strip()


def test_every_mode_renders_the_expected_objects(rendered: dict[str, Rendered]) -> None:
    kinds = {name: sorted(m["kind"] for m in r.manifests) for name, r in rendered.items()}
    assert kinds["standalone-minimal"] == sorted(
        [
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
        ]
    )
    assert kinds["standalone-full"] == sorted(
        [
            "ConfigMap",
            "ConfigMap",  # the dashboard
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "PodMonitor",
            "Secret",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )
    # Inject mode: the app's Deployment plus what its pods reference, no second workload.
    assert kinds["inject-native"] == ["ConfigMap", "Deployment"]
    assert kinds["inject-classic-created-secret"] == ["ConfigMap", "Deployment", "Secret"]
    assert kinds["inject-native-socket-redis-monitoring"] == sorted(
        ["ConfigMap", "ConfigMap", "Deployment", "PodMonitor", "Secret"]
    )


LINT_CASES = (
    [(CHART, {})]
    + [(CHART, values) for values in STANDALONE.values()]
    + [(CHART, {**API_KEY_SECRET, "mode": "inject", **values}) for values in INJECT.values()]
)


@pytest.mark.parametrize(("path", "values"), LINT_CASES)
def test_helm_lint_is_clean(path: Path, values: dict[str, Any]) -> None:
    report = helm.lint(path, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    # 1 = info ("icon is recommended"); 2 = warning, 3 = error
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_helm_lint_of_the_app_chart_with_its_subchart(app_chart_dir: Path) -> None:
    for values in INJECT.values():
        report = helm.lint(
            app_chart_dir,
            {SIDECAR: values},
            strict=True,
            with_subcharts=True,
            kube_version=f"v{KUBE_VERSION}",
        )
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


# --- the shape operators rely on ----------------------------------------------------------


def workloads(result: Rendered) -> list[Manifest]:
    return result.of_kind("Deployment")


@pytest.mark.parametrize("scenario", ALL)
def test_sidecar_security_context(rendered: dict[str, Rendered], scenario: str) -> None:
    [workload] = workloads(rendered[scenario])
    _, container = sidecar_of(pod_spec(workload))
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context.get("privileged", False) is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    # The same numeric user the image declares (Dockerfile USER uid:gid).
    [user] = stages()[-1].all("USER")
    assert f"{context['runAsUser']}:{context['runAsGroup']}" == user


@pytest.mark.parametrize("scenario", [s for s in ALL if s != "inject-native-grpc-probes"])
def test_probes_on_the_management_port(rendered: dict[str, Rendered], scenario: str) -> None:
    result = rendered[scenario]
    _, container = sidecar_of(pod_spec(workloads(result)[0]))
    env = env_of(container)
    management = int(env["SIDECAR_MANAGEMENT_PORT"])
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["stigg-mgmt"] == management
    expected = {"livenessProbe": "/livez", "readinessProbe": "/readyz", "startupProbe": "/livez"}
    for probe, path in expected.items():
        assert container[probe]["httpGet"] == {"path": path, "port": management, "scheme": "HTTP"}
    assert (
        container["readinessProbe"]["timeoutSeconds"]
        < container["readinessProbe"]["periodSeconds"]
        * container["readinessProbe"]["failureThreshold"]
    )


@pytest.mark.parametrize("scenario", ALL)
def test_writable_paths_are_emptydirs_and_config_is_mounted(
    rendered: dict[str, Rendered], scenario: str
) -> None:
    result = rendered[scenario]
    spec = pod_spec(workloads(result)[0])
    _, container = sidecar_of(spec)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    env = env_of(container)
    for path in ("/tmp", env["SIDECAR_DATA_DIR"]):
        assert "emptyDir" in volumes[mounts[path]["name"]], path
        assert not mounts[path].get("readOnly")
    config_path = Path(env["SIDECAR_CONFIG"])
    config_mount = mounts[str(config_path.parent)]
    assert config_mount["readOnly"] is True
    config_map_name = volumes[config_mount["name"]]["configMap"]["name"]
    [config_map] = [
        c for c in result.of_kind("ConfigMap") if c["metadata"]["name"] == config_map_name
    ]
    assert config_path.name in config_map["data"]
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes


@pytest.mark.parametrize("scenario", ALL)
def test_sidecar_accepts_the_rendered_config_and_env(
    rendered: dict[str, Rendered], scenario: str, tmp_path: Path
) -> None:
    """The ConfigMap and the plain env vars go through the sidecar's own config loader."""
    result = rendered[scenario]
    _, container = sidecar_of(pod_spec(workloads(result)[0]))
    env = {k: v for k, v in env_of(container).items() if isinstance(v, str)}
    for name in [n for n in env if n.endswith("_FILE")]:
        # A mounted Secret's file: a stand-in of the same name.
        stand_in = tmp_path / "files" / name
        stand_in.parent.mkdir(exist_ok=True)
        stand_in.write_text("from-a-secret\n")
        env[name] = str(stand_in)
    config_path = Path(env["SIDECAR_CONFIG"])
    [config_map] = [c for c in result.of_kind("ConfigMap") if config_path.name in c.get("data", {})]
    config = tmp_path / config_path.name
    config.write_text(config_map["data"][config_path.name])
    env.update(SIDECAR_CONFIG=str(config), STIGG_API_KEY="test-key-0123456789")
    settings = load_settings(env=env)
    assert settings.server.port == int(env["SIDECAR_SERVER_PORT"])
    assert settings.server.host == env["SIDECAR_SERVER_HOST"]


def test_redis_sentinel_tls_and_acl_come_from_mounted_secrets(
    rendered: dict[str, Rendered],
) -> None:
    spec = pod_spec(rendered["standalone-redis-sentinel-tls-acl"].one("Deployment"))
    _, container = sidecar_of(spec)
    env = env_of(container)
    assert env["SIDECAR_REDIS_URL"] == (
        "rediss+sentinel://redis-sentinel-0.redis:26379,redis-sentinel-1.redis:26379/mymaster/0"
    )
    assert env["SIDECAR_REDIS_MIN_REPLICAS_ACK"] == "1"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for volume, secret, files in (
        (
            "stigg-sidecar-redis-tls",
            "redis-tls",
            {"CA": "ca.crt", "CERT": "tls.crt", "KEY": "tls.key"},
        ),
        ("stigg-sidecar-redis-auth", "redis-acl", {"USERNAME": "username", "PASSWORD": "password"}),
    ):
        assert volumes[volume]["secret"]["secretName"] == secret
        assert mounts[volume]["readOnly"] is True
        for what, key in files.items():
            assert env[f"SIDECAR_REDIS_{what}_FILE"] == f"{mounts[volume]['mountPath']}/{key}"
    assert "SIDECAR_REDIS_CLUSTER" not in env
    assert "SIDECAR_REDIS_PASSWORD" not in env  # only ever a file


def test_redis_cluster_with_tls_verifies_against_the_mounted_ca(
    rendered: dict[str, Rendered],
) -> None:
    spec = pod_spec(workloads(rendered["inject-native-redis-cluster-tls"])[0])
    _, container = sidecar_of(spec)
    env = env_of(container)
    assert env["SIDECAR_REDIS_URL"]["secretKeyRef"]["name"] == "redis-cluster-url"
    assert env["SIDECAR_REDIS_CLUSTER"] == "true"
    assert env["SIDECAR_REDIS_CA_FILE"].endswith("/ca.crt")
    assert "SIDECAR_REDIS_CERT_FILE" not in env


def test_standalone_shape(rendered: dict[str, Rendered]) -> None:
    result = rendered["standalone-minimal"]
    deployment = result.one("Deployment")
    spec = pod_spec(deployment)
    where, container = sidecar_of(spec)
    assert where == "containers"
    assert "restartPolicy" not in container
    env = env_of(container)
    # Shared by the namespace: the API listens on the pod IP, behind a bearer token.
    assert env["SIDECAR_SERVER_HOST"] == "0.0.0.0"
    assert env["SIDECAR_AUTH_TOKEN"] == {"secretKeyRef": {"name": "sidecar-auth", "key": "token"}}
    assert env["STIGG_API_KEY"] == {"secretKeyRef": {"name": "stigg-api-key", "key": "api-key"}}
    assert spec["terminationGracePeriodSeconds"] >= 30
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()

    service = result.one("Service")
    assert service["spec"]["selector"] == selector
    named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert named_ports[ports["http"]["targetPort"]] == int(env["SIDECAR_SERVER_PORT"]) == 8080
    assert named_ports[ports["management"]["targetPort"]] == 8081

    pdb = result.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["maxUnavailable"] == 1  # never blocks a node drain


def test_standalone_autoscaling_owns_the_replica_count(rendered: dict[str, Rendered]) -> None:
    result = rendered["standalone-full"]
    deployment = result.one("Deployment")
    assert "replicas" not in deployment["spec"]
    hpa = result.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    _, container = sidecar_of(pod_spec(deployment))
    assert container["resources"]["requests"]["cpu"]  # utilization needs a CPU request


@pytest.mark.parametrize("scenario", ["inject-native", "inject-native-socket-redis-monitoring"])
def test_native_sidecar_shape(rendered: dict[str, Rendered], scenario: str) -> None:
    spec = pod_spec(rendered[scenario].one("Deployment"))
    where, container = sidecar_of(spec)
    assert where == "initContainers"
    assert container["restartPolicy"] == "Always"
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    # Kubernetes stops a native sidecar after the app's containers: no preStop delay needed.
    assert "lifecycle" not in container
    assert [c["name"] for c in spec["containers"]] == ["app"]


@pytest.mark.parametrize("scenario", ["inject-classic", "inject-classic-created-secret"])
def test_classic_sidecar_shape(rendered: dict[str, Rendered], scenario: str) -> None:
    spec = pod_spec(rendered[scenario].one("Deployment"))
    where, container = sidecar_of(spec)
    assert where == "containers"
    assert "restartPolicy" not in container
    assert not spec.get("initContainers")
    # Keeps serving while the app drains, since both get SIGTERM at once.
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]


@pytest.mark.parametrize("scenario", list(INJECT))
def test_injected_api_stays_on_loopback(rendered: dict[str, Rendered], scenario: str) -> None:
    spec = pod_spec(rendered[scenario].one("Deployment"))
    _, container = sidecar_of(spec)
    env = env_of(container)
    assert env["SIDECAR_SERVER_HOST"] == "127.0.0.1"
    # The REST API is not declared: it is not reachable from outside the pod.
    assert [p["name"] for p in container["ports"]] == ["stigg-mgmt", "stigg-grpc"]
    [app] = [c for c in spec["containers"] if c["name"] == "app"]
    assert env_of(app)["STIGG_SIDECAR_URL"] == f"http://127.0.0.1:{env['SIDECAR_SERVER_PORT']}"


@pytest.mark.parametrize("scenario", ALL)
def test_grpc_port_in_every_mode(rendered: dict[str, Rendered], scenario: str) -> None:
    """Stigg Sidecar's gRPC API: a declared container port, the Service's `grpc` port with
    appProtocol grpc (standalone), loopback in the app's pod unless kubelet must probe it."""
    result = rendered[scenario]
    spec = pod_spec(workloads(result)[0])
    _, container = sidecar_of(spec)
    env = env_of(container)
    port = int(env["SIDECAR_GRPC_PORT"])
    assert env["SIDECAR_GRPC_ENABLED"] == "true"
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["stigg-grpc"] == port
    if result.mode == "standalone":
        assert env["SIDECAR_GRPC_HOST"] == "0.0.0.0"
        [grpc] = [p for p in result.one("Service")["spec"]["ports"] if p["name"] == "grpc"]
        assert grpc == {
            "name": "grpc",
            "port": port,
            "targetPort": "stigg-grpc",
            "protocol": "TCP",
            "appProtocol": "grpc",
        }
    else:
        probed = scenario == "inject-native-grpc-probes"
        assert env["SIDECAR_GRPC_HOST"] == ("0.0.0.0" if probed else "127.0.0.1")
        [app] = [c for c in spec["containers"] if c["name"] == "app"]
        assert env_of(app)["STIGG_SIDECAR_GRPC_PORT"] == str(port)


def test_grpc_probes_are_an_option(rendered: dict[str, Rendered]) -> None:
    spec = pod_spec(rendered["inject-native-grpc-probes"].one("Deployment"))
    _, container = sidecar_of(spec)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"] == {"port": 15051}
        assert "httpGet" not in container[probe]


def test_grpc_can_be_switched_off(chart: helm.Chart) -> None:
    values = {**API_KEY_SECRET, **AUTH_SECRET, "grpc": {"enabled": False}}
    result = render(chart, values, "standalone-no-grpc", "standalone")
    _, container = sidecar_of(pod_spec(result.one("Deployment")))
    assert env_of(container)["SIDECAR_GRPC_ENABLED"] == "false"
    assert "stigg-grpc" not in {p["name"] for p in container["ports"]}
    assert "grpc" not in {p["name"] for p in result.one("Service")["spec"]["ports"]}


def test_unix_socket_is_shared_with_the_app(rendered: dict[str, Rendered]) -> None:
    spec = pod_spec(rendered["inject-native-socket-redis-monitoring"].one("Deployment"))
    _, sidecar = sidecar_of(spec)
    [app] = spec["containers"]
    socket = env_of(sidecar)["SIDECAR_SERVER_UNIX_SOCKET"]
    assert env_of(app)["STIGG_SIDECAR_SOCKET"] == socket
    directory = str(Path(socket).parent)
    sidecar_mount = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}[directory]
    app_mount = {m["mountPath"]: m["name"] for m in app["volumeMounts"]}[directory]
    assert sidecar_mount == app_mount
    volume = {v["name"]: v for v in spec["volumes"]}[sidecar_mount]
    assert "emptyDir" in volume
    # Custom ports reach the sidecar's env and its probes.
    assert env_of(sidecar)["SIDECAR_SERVER_PORT"] == "18080"
    assert sidecar["livenessProbe"]["httpGet"]["port"] == 18081


# --- secrets ------------------------------------------------------------------------------


def test_existing_secrets_are_referenced_not_created(rendered: dict[str, Rendered]) -> None:
    result = rendered["standalone-redis-secret"]
    assert result.of_kind("Secret") == []
    _, container = sidecar_of(pod_spec(result.one("Deployment")))
    env = env_of(container)
    assert env["STIGG_API_KEY"] == {"secretKeyRef": {"name": "stigg-api-key", "key": "api-key"}}
    assert env["SIDECAR_REDIS_URL"] == {"secretKeyRef": {"name": "redis-credentials", "key": "url"}}
    assert container["image"] == "ghcr.io/stigg-sidecar/stigg-sidecar@sha256:" + "ab" * 32


def test_created_secret_holds_the_given_values(rendered: dict[str, Rendered]) -> None:
    result = rendered["standalone-full"]
    secret = result.one("Secret")
    assert secret["metadata"]["name"] == FULLNAME
    assert set(secret["data"]) == {"api-key", "redis-url", "auth-token"}
    _, container = sidecar_of(pod_spec(result.one("Deployment")))
    env = env_of(container)
    for variable, key in [
        ("STIGG_API_KEY", "api-key"),
        ("SIDECAR_REDIS_URL", "redis-url"),
        ("SIDECAR_AUTH_TOKEN", "auth-token"),
    ]:
        assert env[variable] == {"secretKeyRef": {"name": FULLNAME, "key": key}}
    assert env["STIGG_API_URL"] == "https://api.stigg.io/graphql"
    assert env["SIDECAR_STIGG_MAX_RETRIES"] == "3"
    # Secrets never reach the ConfigMap or plain env values.
    text = json.dumps(result.manifests)
    for secret_value in ("server-key-123", "a-long-random-token", "redis://:pw@"):
        assert secret_value not in text


def test_injected_sidecar_uses_the_subcharts_secret_and_configmap(
    rendered: dict[str, Rendered],
) -> None:
    result = rendered["inject-classic-created-secret"]
    spec = pod_spec(result.one("Deployment"))
    _, container = sidecar_of(spec)
    secret = result.one("Secret")
    assert env_of(container)["STIGG_API_KEY"] == {
        "secretKeyRef": {"name": secret["metadata"]["name"], "key": "api-key"}
    }
    assert secret["metadata"]["name"] == FULLNAME
    assert result.one("ConfigMap")["metadata"]["name"] == FULLNAME


def test_config_change_rolls_the_pods(chart: helm.Chart, app_chart: helm.Chart) -> None:
    def annotations(values: dict[str, Any], inject: bool) -> dict[str, str]:
        if inject:
            result = render(app_chart, {SIDECAR: values}, "x", "inject")
        else:
            result = render(chart, {**API_KEY_SECRET, **AUTH_SECRET, **values}, "x", "standalone")
        return result.one("Deployment")["spec"]["template"]["metadata"]["annotations"]  # type: ignore[no-any-return]

    for inject in (False, True):
        before = annotations({}, inject)["checksum/stigg-sidecar-config"]
        after = annotations({"config": {"logging": {"level": "WARNING"}}}, inject)
        assert after["checksum/stigg-sidecar-config"] != before


# --- monitoring ---------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["standalone-full", "inject-native-socket-redis-monitoring"])
def test_pod_monitor_selects_the_pods_running_the_sidecar(
    rendered: dict[str, Rendered], scenario: str
) -> None:
    result = rendered[scenario]
    monitor = result.one("PodMonitor")
    template = result.one("Deployment")["spec"]["template"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    )
    _, container = sidecar_of(template["spec"])
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in container["ports"]}
    assert endpoint["port"] == "stigg-mgmt"


def test_pod_monitor_carries_the_prometheus_selector_label(rendered: dict[str, Rendered]) -> None:
    monitor = rendered["standalone-full"].one("PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_service_monitor_scrapes_the_management_port(rendered: dict[str, Rendered]) -> None:
    result = rendered["standalone-full"]
    monitor = result.one("ServiceMonitor")
    service = result.one("Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    [endpoint] = monitor["spec"]["endpoints"]
    port = {p["name"]: p for p in service["spec"]["ports"]}[endpoint["port"]]
    assert port["targetPort"] == "stigg-mgmt"


KNOWN_METRICS = {
    "stigg_sidecar_http_requests_total",
    "stigg_sidecar_http_request_duration_seconds_bucket",
    "stigg_sidecar_entitlement_checks_total",
    "stigg_sidecar_upstream_requests_total",
    "stigg_sidecar_usage_spool_depth",
    "stigg_sidecar_usage_spool_oldest_age_seconds",
    "stigg_sidecar_usage_dead_letters_total",
    "stigg_sidecar_circuit_breaker_state",
}


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


@pytest.mark.parametrize("scenario", ["standalone-full", "inject-native-socket-redis-monitoring"])
def test_grafana_dashboard_configmap(rendered: dict[str, Rendered], scenario: str) -> None:
    [config_map] = [
        c
        for c in rendered[scenario].of_kind("ConfigMap")
        if c["metadata"]["name"].endswith("-dashboard")
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    [(file_name, text)] = config_map["data"].items()
    assert file_name.endswith(".json")
    dashboard = json.loads(text)
    assert dashboard["uid"] == "stigg-sidecar"
    queries = dashboard_queries(dashboard)
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("request rate", "latency", "checks", "upstream errors", "spool", "circuit"):
        assert topic in titles
    used = {name for q in queries for name in re.findall(r"\bstigg_sidecar_\w+", q)}
    assert used == KNOWN_METRICS
    assert any("histogram_quantile(0.99" in q for q in queries)
    assert any("histogram_quantile(0.5" in q for q in queries)


# --- labels -------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ALL)
def test_recommended_labels(rendered: dict[str, Rendered], scenario: str) -> None:
    for manifest in rendered[scenario].manifests:
        if manifest["metadata"]["name"] == f"{RELEASE}-app":
            continue  # the example app's own Deployment
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "stigg-sidecar"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"]
        assert labels["helm.sh/chart"] == "stigg-sidecar-0.1.0"


# --- wrong values stop the install with one line saying what to set -----------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "stigg.apiKey: set existingSecret"),
        (API_KEY_SECRET, "set auth.token.existingSecret"),
        (
            {**API_KEY_SECRET, **AUTH_SECRET, "unixSocket": {"enabled": True}},
            "unixSocket.enabled needs mode=inject",
        ),
        (
            {**API_KEY_SECRET, "mode": "inject", "metrics": {"serviceMonitor": {"enabled": True}}},
            "metrics.serviceMonitor needs mode=standalone",
        ),
        (
            {"stigg": {"apiKey": {"existingSecret": "s", "value": "v"}}, **AUTH_SECRET},
            "stigg.apiKey: set existingSecret or value, not both",
        ),
        (
            {**API_KEY_SECRET, **AUTH_SECRET, "ports": {"http": 8081}},
            "ports.http, ports.management, ports.mcp and ports.grpc must differ",
        ),
        (
            {**API_KEY_SECRET, **AUTH_SECRET, "ports": {"grpc": 8080}},
            "ports.http, ports.management, ports.mcp and ports.grpc must differ",
        ),
        (
            {**API_KEY_SECRET, **AUTH_SECRET, "grpc": {"enabled": False}, "probes": {"grpc": True}},
            "probes.grpc needs grpc.enabled",
        ),
        (
            {**API_KEY_SECRET, **AUTH_SECRET, "redis": {"cluster": True}},
            "redis: set redis.url or redis.sentinel.hosts to use Redis",
        ),
        (
            {
                **API_KEY_SECRET,
                **AUTH_SECRET,
                "redis": {"url": {"value": "redis://r:6379"}, "sentinel": {"hosts": ["s:26379"]}},
            },
            "redis.sentinel.hosts: set it or redis.url, not both",
        ),
        (
            {
                **API_KEY_SECRET,
                **AUTH_SECRET,
                "redis": {"url": {"value": "redis://r:6379"}, "cluster": True, "minReplicasAck": 1},
            },
            "redis.minReplicasAck: not supported with redis.cluster",
        ),
        (
            {
                **API_KEY_SECRET,
                **AUTH_SECRET,
                "redis": {
                    "url": {"value": "rediss://r:6379"},
                    "tls": {"existingSecret": "t", "certKey": "tls.crt"},
                },
            },
            "redis.tls.certKey: set together with redis.tls.keyKey",
        ),
    ],
)
def test_invalid_combinations_fail_the_render(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(chart, values, "bad", "?")


@pytest.mark.parametrize(
    "values",
    [
        {"mode": "sidecar"},
        {"inject": {"type": "auto"}},
        {"standalone": {"terminationGracePeriodSeconds": 10}},
        {"stigg": {"apikey": {"value": "typo"}}},
        {"ports": {"http": "8080"}},
        {"probes": {"liveness": {"path": "livez"}}},
    ],
)
def test_schema_rejects_wrong_values(chart: helm.Chart, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)


def test_injecting_needs_inject_mode(app_chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"set stigg-sidecar\.mode=inject"):
        render(app_chart, {SIDECAR: {"mode": "standalone", **AUTH_SECRET}}, "x", "inject")


def test_disabled_sidecar_renders_nothing(app_chart: helm.Chart) -> None:
    result = render(app_chart, {SIDECAR: {"enabled": False}}, "off", "inject")
    assert [m["kind"] for m in result.manifests] == ["Deployment"]
    spec = pod_spec(result.one("Deployment"))
    assert [c["name"] for c in spec["containers"]] == ["app"]
    assert not spec.get("initContainers")
    assert not spec.get("volumes")
    kubernetes_validate.validate(result.one("Deployment"), KUBE_VERSION, strict=True)


def test_app_chart_validates_the_sidecar_values_against_its_schema(app_chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmValuesError, match="/inject/type"):
        app_chart.validate_schema({SIDECAR: {"inject": {"type": "sidecar"}}})


# --- the README's "Install with Helm" examples --------------------------------------------


def readme_helm_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("## Install with Helm\n", 1)[1].split("\n## ", 1)[0]


def test_readme_includes_only_templates_the_chart_defines() -> None:
    section = readme_helm_section()
    defined = set(
        re.findall(r'define "([^"]+)"', (CHART / "templates" / "_inject.tpl").read_text())
    )
    used = set(re.findall(r'include "([^"]+)"', section))
    assert used
    assert used <= defined


def test_readme_values_examples_are_valid(chart: helm.Chart, app_chart: helm.Chart) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", readme_helm_section(), flags=re.S)
    checked = 0
    for block in blocks:
        if "{{" in block or block.startswith("# Chart.yaml"):
            continue
        values = yaml.safe_load(block)
        if SIDECAR in values:  # an app chart's values
            render(app_chart, values, "readme", "inject")
        else:
            chart.validate_schema(values)
        checked += 1
    assert checked >= 3


def test_readme_standalone_install_command_renders(chart: helm.Chart) -> None:
    section = readme_helm_section()
    command = re.search(r"helm install .*?(?=\n```)", section, flags=re.S)
    assert command
    sets = re.findall(r"--set (\S+)", command.group(0))
    values: dict[str, Any] = {}
    for expression in sets:
        parsed = helm.parse_set_string(expression)
        values = helm_merge(values, parsed)
    result = render(chart, values, "readme", "standalone")
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= {
        m["kind"] for m in result.manifests
    }


def helm_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
