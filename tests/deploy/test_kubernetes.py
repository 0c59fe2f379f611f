"""deploy/k8s: the base and every overlay, rendered by `kubectl kustomize`, validate
offline against the Kubernetes schemas (strict: unknown fields are errors) and keep
the properties docs/deploy.md promises."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.gateway.settings import GatewaySettings
from services.registry.settings import RegistrySettings
from services.trainer.settings import TrainerSettings
from services.worker.settings import WorkerSettings
from tests.conftest import require
from tests.deploy import deployfiles as df

# The oldest Kubernetes release the manifests promise to work on, and the newest schemas.
VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
TARGETS = ["base", *sorted(f"overlays/{p.name}" for p in (df.K8S / "overlays").iterdir())]
SETTINGS = {
    "registry": RegistrySettings,
    "worker": WorkerSettings,
    "gateway": GatewaySettings,
    "trainer": TrainerSettings,
}
PORTS = {
    "registry": (50051, 9102),
    "worker": (9001, 9101),
    "gateway": (8001, 9100),
    "trainer": (9301, 9302),
}
# Serve only their health service and metrics: no peer needs their gRPC port.
UNCALLED = {"trainer"}
# Plaintext ports serving health alone, for the kubelet's gRPC probes (mutual TLS).
HEALTH_PORTS = {"registry": 50052, "worker": 9003, "gateway": 8002, "trainer": 9303}
TLS = "/var/run/secrets/liveml-tls"


@cache
def render(target: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    require(kubectl is not None, "kubectl (renders kustomizations)")
    assert kubectl is not None
    done = subprocess.run(
        [kubectl, "kustomize", str(df.K8S / target)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def kinds(target: str, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in render(target) if d["kind"] == kind}


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def component(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_manifests_validate(target: str, version: str) -> None:
    docs = render(target)
    assert docs
    for doc in docs:
        where = f"{target}: {doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where} against {version}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{where}: {exc.message}")


def test_the_validator_rejects_mistakes() -> None:
    deployment = kinds("base", "Deployment")["liveml-worker"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["prot"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_workloads(target: str) -> None:
    deployments = kinds(target, "Deployment")
    assert {component(d) for d in deployments.values()} == set(PORTS)
    for name, deployment in deployments.items():
        role = component(deployment)
        grpc_port, metrics_port = PORTS[role]
        pod = deployment["spec"]["template"]
        spec = pod["spec"]
        (container,) = spec["containers"]
        env = env_of(container)
        assert container["args"][:2] == [role, "serve"], name
        assert env["LIVEML_HOST"]["value"] == "0.0.0.0"
        # liveml ignores unknown LIVEML_* variables: each must be a setting of the service.
        settings = {f"LIVEML_{field.upper()}" for field in SETTINGS[role].model_fields}
        maps = kinds(target, "ConfigMap")
        config = [
            k for ref in container["envFrom"] for k in maps[ref["configMapRef"]["name"]]["data"]
        ]
        for key in [*env, *config]:
            assert not key.startswith("LIVEML_") or key in settings, f"{name}: {key}"
        assert env["LIVEML_PORT"]["value"] == str(grpc_port)
        assert env["LIVEML_METRICS_PORT"]["value"] == str(metrics_port)
        # gRPC health probes on the plaintext health-only port (the kubelet shows no
        # client certificate).
        assert env["LIVEML_HEALTH_PORT"]["value"] == str(HEALTH_PORTS[role])
        assert {"name": "health", "containerPort": HEALTH_PORTS[role]} in container["ports"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == HEALTH_PORTS[role], (name, probe)
        # Requests and limits for CPU and memory.
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) >= {"cpu", "memory"}, (name, kind)
        # Graceful stop: the pod gets longer than preStop + the in-flight grace.
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        grace = float(env["LIVEML_SHUTDOWN_GRACE"]["value"])
        assert spec["terminationGracePeriodSeconds"] > float(pre_stop[1]) + grace, name
        # Prometheus finds the metrics port by annotation (no ServiceMonitor).
        notes = pod["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true"
        assert notes["prometheus.io/port"] == str(metrics_port)
        # Locked down.
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert spec["enableServiceLinks"] is False
        assert spec["automountServiceAccountToken"] is False


@pytest.mark.parametrize("target", TARGETS)
def test_registry_and_workers(target: str) -> None:
    deployments = {component(d): d for d in kinds(target, "Deployment").values()}
    registry = deployments["registry"]
    assert registry["spec"]["replicas"] == 2
    renv = env_of(registry["spec"]["template"]["spec"]["containers"][0])
    url = renv["LIVEML_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert url["name"] == "liveml-registry" and url["key"] == "database-url"
    assert "secretKeyRef" in renv["LIVEML_ARTIFACT_KEY"]["valueFrom"]
    # Every registry replica must see the same artifacts.
    claims = kinds(target, "PersistentVolumeClaim")
    volumes = registry["spec"]["template"]["spec"]["volumes"]
    (claim,) = [
        v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
    ]
    assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"]

    worker = deployments["worker"]["spec"]["template"]["spec"]
    wenv = env_of(worker["containers"][0])
    assert wenv["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert wenv["LIVEML_ADVERTISE"]["value"] == "$(POD_IP):9001"
    names = [e["name"] for e in worker["containers"][0]["env"]]
    assert names.index("POD_IP") < names.index("LIVEML_ADVERTISE"), "$(POD_IP) needs it first"
    for role in ("worker", "gateway", "trainer"):
        spec = deployments[role]["spec"]
        cenv = env_of(spec["template"]["spec"]["containers"][0])
        assert spec["template"]["spec"]["containers"][0]["args"][2:] == [
            "--registry",
            "liveml-registry:50051",
        ]
        token = cenv["LIVEML_REGISTRY_TOKEN_FILE"]["value"]
        mounts = spec["template"]["spec"]["containers"][0]["volumeMounts"]
        assert any(token.startswith(m["mountPath"] + "/") for m in mounts), role
    # The trainer: one replica (a second would only wait for leases), its own token and
    # the key that seals learner checkpoints, both from its Secret.
    trainer = deployments["trainer"]["spec"]
    assert trainer["replicas"] == 1
    tenv = env_of(trainer["template"]["spec"]["containers"][0])
    assert tenv["LIVEML_CHECKPOINT_KEY_FILE"]["value"].startswith("/var/run/secrets/liveml/")
    secrets = [
        v["secret"]["secretName"] for v in trainer["template"]["spec"]["volumes"] if "secret" in v
    ]
    assert "liveml-trainer" in secrets
    services = kinds(target, "Service")
    assert services["liveml-registry"]["spec"]["ports"][0]["port"] == 50051
    assert services["liveml-gateway"]["spec"]["ports"][0]["port"] == 8001


@pytest.mark.parametrize("target", TARGETS)
def test_autoscalers_and_budgets(target: str) -> None:
    deployments = kinds(target, "Deployment")
    scaled = {
        h["spec"]["scaleTargetRef"]["name"]
        for h in kinds(target, "HorizontalPodAutoscaler").values()
    }
    assert scaled == {"liveml-worker", "liveml-gateway"}
    for name in scaled:
        assert "replicas" not in deployments[name]["spec"], f"{name}: the HPA owns replicas"
    budgets = kinds(target, "PodDisruptionBudget").values()
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [
            b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(covering) == 1, f"{name}: {len(covering)} PodDisruptionBudgets"


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies(target: str) -> None:
    policies = {component(p): p["spec"] for p in kinds(target, "NetworkPolicy").values()}
    assert set(policies) == {*PORTS, "event-stream"}

    def allowed(role: str, port: int) -> list[dict[str, Any]]:
        """The `from` peers that may reach `role` on `port` ([{}] = anyone)."""
        peers: list[dict[str, Any]] = []
        for rule in policies[role]["ingress"]:
            if any(p["port"] == port for p in rule.get("ports", [])):
                peers += rule.get("from", [{}])
        return peers

    for role, (grpc_port, metrics_port) in PORTS.items():
        assert policies[role]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == role
        assert policies[role]["policyTypes"] == ["Ingress"]
        if role in UNCALLED:
            assert not allowed(role, grpc_port), f"the {role}'s gRPC port is open"
        else:
            assert allowed(role, grpc_port), f"nothing may reach the {role}'s gRPC port"
        for peer in allowed(role, metrics_port):
            assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    # Only gateways reach workers.
    (peer,) = allowed("worker", 9001)
    assert peer == {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "liveml",
                "app.kubernetes.io/component": "gateway",
            }
        }
    }
    # Only liveml pods (same namespace) reach the registry.
    (peer,) = allowed("registry", 50051)
    assert peer == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "liveml"}}}
    # Anyone reaches the gateway.
    assert allowed("gateway", 8001) == [{}]
    # Only the stream's writers and readers reach NATS; its monitoring port is closed.
    assert policies["event-stream"]["policyTypes"] == ["Ingress"]
    (peer,) = allowed("event-stream", 4222)
    selector = peer["podSelector"]
    assert selector["matchLabels"] == {"app.kubernetes.io/name": "liveml"}
    (expression,) = selector["matchExpressions"]
    assert expression["operator"] == "In"
    assert set(expression["values"]) == {"registry", "gateway", "trainer"}
    assert not allowed("event-stream", 8222)


def _env_from(target: str, container: dict[str, Any]) -> dict[str, str]:
    maps = kinds(target, "ConfigMap")
    out: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        out |= maps[ref["configMapRef"]["name"]]["data"]
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_the_event_stream_is_nats_jetstream(target: str) -> None:
    (nats,) = kinds(target, "StatefulSet").values()
    spec = nats["spec"]
    assert spec["replicas"] == 1
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert "--jetstream" in args and "--store_dir=/data" in args
    (claim,) = spec["volumeClaimTemplates"]
    assert any(
        m["name"] == claim["metadata"]["name"] and m["mountPath"] == "/data"
        for m in container["volumeMounts"]
    ), "JetStream's store is on the claimed volume"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz?js-enabled-only=true", probe
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = kinds(target, "Service")[spec["serviceName"]]
    assert service["spec"]["clusterIP"] == "None"  # a StatefulSet's governing service
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    url = f"nats://{service['metadata']['name']}:{port['port']}"

    deployments = {component(d): d for d in kinds(target, "Deployment").values()}
    for role in ("registry", "gateway", "trainer"):
        (c,) = deployments[role]["spec"]["template"]["spec"]["containers"]
        env = _env_from(target, c)
        assert env["LIVEML_EVENT_STREAM"] == url, role
        assert SETTINGS[role](_env_file=None, event_stream=url).event_stream == url
        retention = int(env["LIVEML_EVENT_RETENTION_BYTES"])
        limit = next(a for a in args if a.startswith("--max_file_store="))
        assert retention < int(limit.split("=")[1].removesuffix("GB")) * 10**9, role
    (worker,) = deployments["worker"]["spec"]["template"]["spec"]["containers"]
    assert "LIVEML_EVENT_STREAM" not in _env_from(target, worker)


def _settings(target: str, container: dict[str, Any], role: str) -> Any:
    """The service's settings as the container's variables make them."""
    values = {**_env_from(target, container)}
    values |= {k: e["value"] for k, e in env_of(container).items() if "value" in e}
    fields = SETTINGS[role].model_fields
    given = {
        k.removeprefix("LIVEML_").lower(): v
        for k, v in values.items()
        if k.startswith("LIVEML_")
        and k.removeprefix("LIVEML_").lower() in fields
        # Placeholders the kubelet fills in, and settings read from Secrets.
        and "$(" not in v
    }
    return SETTINGS[role].model_construct(**given)


@pytest.mark.parametrize("target", TARGETS)
def test_mutual_tls_between_all_services(target: str) -> None:
    """Every service serves TLS with its own certificate from Secret liveml-tls-ROLE
    (made by `liveml tls init`: tls.crt, tls.key, ca.crt), wants a client certificate
    where only liveml calls it, and shows its certificate to what it calls; every host
    name dialled is one the stock certificates carry."""
    from services.cli.main import DEFAULT_SANS
    from services.common.config import plaintext_upstreams

    deployments = {component(d): d for d in kinds(target, "Deployment").values()}
    for role, deployment in deployments.items():
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        env = {k: e.get("value") for k, e in env_of(container).items()}
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == TLS]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == f"liveml-tls-{role}"
        assert env["LIVEML_TLS_CERT"] == f"{TLS}/tls.crt"
        assert env["LIVEML_TLS_KEY"] == f"{TLS}/tls.key"
        # Only the gateway takes callers from outside liveml (clients, by token).
        wants_certificate = role != "gateway"
        assert (env.get("LIVEML_TLS_CLIENT_CA") == f"{TLS}/ca.crt") is wants_certificate, role
        if role != "registry":
            assert env["LIVEML_REGISTRY_CA"] == f"{TLS}/ca.crt"
            assert env["LIVEML_REGISTRY_CERT"] == f"{TLS}/tls.crt"
            assert env["LIVEML_REGISTRY_KEY"] == f"{TLS}/tls.key"
            host = container["args"][container["args"].index("--registry") + 1]
            assert host.rsplit(":", 1)[0] in DEFAULT_SANS, host
        # Nothing served in TLS calls onward in plaintext (the server would refuse to start).
        assert plaintext_upstreams(_settings(target, container, role)) == [], role
    gateway = {
        k: e.get("value")
        for k, e in env_of(
            deployments["gateway"]["spec"]["template"]["spec"]["containers"][0]
        ).items()
    }
    assert gateway["LIVEML_WORKER_CA"] == f"{TLS}/ca.crt"
    assert gateway["LIVEML_WORKER_CERT"] == f"{TLS}/tls.crt"
    # Workers are reached by pod IP: their certificate is checked for a name it carries.
    assert gateway["LIVEML_WORKER_TLS_NAME"] in DEFAULT_SANS
    # The gateway's certificate (CN gateway, as `liveml tls init` names it) is the
    # gateway's identity on workers.
    worker = env_of(deployments["worker"]["spec"]["template"]["spec"]["containers"][0])
    assert worker["LIVEML_CERT_ROLES"]["value"] == "gateway=gateway"
