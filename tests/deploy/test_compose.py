"""deploy/compose.yaml: valid against the Compose Specification schema (vendored, see
SCHEMAS.md), health-gated start order, secrets only from files, every mounted file
present. The running wiring is proven in test_compose_wiring.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cryptography import x509
from sqlalchemy.engine import make_url

from services.gateway.settings import GatewaySettings
from services.registry.settings import RegistrySettings
from services.trainer.settings import TrainerSettings
from services.worker.settings import WorkerSettings
from tests.deploy import deployfiles as df

SCHEMA = Path(__file__).with_name("compose-spec.json")
SETTINGS = {
    "registry": RegistrySettings,
    "worker": WorkerSettings,
    "gateway": GatewaySettings,
    "trainer": TrainerSettings,
}


def validator() -> jsonschema.Draft201909Validator:
    # The schema names draft 2019-09 by an old URI that jsonschema does not recognise.
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def test_compose_file_matches_the_specification() -> None:
    errors = sorted(validator().iter_errors(df.load_compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(
        f"{'.'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in errors
    )


def test_the_schema_rejects_mistakes() -> None:
    compose = df.load_compose()
    compose["services"]["gateway"]["depends_on"]["registry"]["condition"] = "service_ready"
    compose["services"]["worker-1"]["helthcheck"] = {"test": ["CMD", "true"]}
    paths = {tuple(e.path)[:3] for e in validator().iter_errors(compose)}
    assert ("services", "gateway", "depends_on") in paths
    assert ("services", "worker-1") in paths


def test_services() -> None:
    compose = df.load_compose()
    services = compose["services"]
    assert {"postgres", "nats", "registry", "gateway", "prometheus", "grafana"} <= set(services)
    assert any(s in services for s in ("jaeger", "otel-collector")), "a trace collector"
    live = df.liveml_services(compose)
    workers = [
        n for n, s in live.items() if df.command(s.get("command"))[:2] == ["worker", "serve"]
    ]
    assert len(workers) >= 2
    advertised = {df.environment(live[w])["LIVEML_ADVERTISE"] for w in workers}
    assert advertised == {f"{w}:9001" for w in workers}, "each worker advertises its own name"
    # NATS with JetStream, checked healthy.
    nats = services["nats"]
    assert "--jetstream" in df.command(nats["command"]) and "healthcheck" in nats


def test_start_order_is_health_gated() -> None:
    compose = df.load_compose()
    services = compose["services"]
    order = df.start_order(services)
    assert order.index("postgres") < order.index("registry") < order.index("gateway")
    for name, service in df.liveml_services(compose).items():
        for dep, condition in df.depends_on(service).items():
            target = services[dep]
            if condition == "service_healthy":
                # Its own healthcheck, or the image's HEALTHCHECK (liveml services).
                assert "healthcheck" in target or dep in df.liveml_services(compose), dep
                assert not target.get("healthcheck", {}).get("disable"), dep
            elif condition == "service_started":
                assert dep in ("jaeger", "otel-collector", "nats"), f"{name} -> {dep} unchecked"
    gateway = df.depends_on(services["gateway"])
    assert gateway["registry"] == "service_healthy"
    assert all(gateway[w] == "service_healthy" for w in ("worker-1", "worker-2"))
    assert df.depends_on(services["registry"])["postgres"] == "service_healthy"
    assert df.depends_on(services["grafana"])["prometheus"] == "service_healthy"


SECRET_NAME = re.compile(r"(KEY|TOKEN|PASSWORD|SECRET)(_|$)")


def test_secrets_come_from_files() -> None:
    compose = df.load_compose()
    for name, secret in compose["secrets"].items():
        assert set(secret) == {"file"}, f"secret {name}: from a file"
        assert secret["file"].startswith("./secrets/"), "deploy/secrets/ is git-ignored"
    for name, service in compose["services"].items():
        for key, value in df.environment(service).items():
            if SECRET_NAME.search(key) and not key.endswith(("_ID", "_FILE")):
                # Allowed only as a path to a file (TLS key path, token file).
                assert value.startswith("/"), f"{name}: {key} holds a value, not a file"
            if value.startswith("/run/secrets/"):
                secret = value.removeprefix("/run/secrets/")
                granted = [target for _, target in df.secret_mounts(service)]
                assert secret in granted, f"{name}: {key} is not granted"
    registry = compose["services"]["registry"]
    env = df.environment(registry)
    assert env["LIVEML_ARTIFACT_KEY_FILE"] == "/run/secrets/artifact_key"
    assert env["LIVEML_TLS_KEY"] == "/run/secrets/tls_key"
    assert env["LIVEML_ARTIFACT_OLD_KEYS_FILE"] == "/run/secrets/artifact_old_keys"
    url = make_url(env["LIVEML_DATABASE_URL"])
    assert url.password is None, "the password comes from LIVEML_DATABASE_PASSWORD_FILE"
    postgres = df.environment(compose["services"]["postgres"])
    assert postgres["POSTGRES_PASSWORD_FILE"] == env["LIVEML_DATABASE_PASSWORD_FILE"]
    assert (url.username, url.database) == (postgres["POSTGRES_USER"], postgres["POSTGRES_DB"])


def test_mounted_files_exist() -> None:
    compose = df.load_compose()
    for name, service in compose["services"].items():
        for source, target, _ in df.volume_mounts(service):
            if source.startswith((".", "/")):
                assert (df.DEPLOY / source).exists(), f"{name}: {source} -> {target} is missing"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"
    # Prometheus' own configuration refers to what is mounted beside it.
    prometheus: dict[str, Any] = yaml.safe_load(df.PROMETHEUS.read_text())
    for rules in prometheus.get("rule_files", []):
        assert list(df.PROMETHEUS.parent.glob(rules)), rules


def test_prometheus_scrapes_every_service() -> None:
    compose = df.load_compose()
    prometheus = yaml.safe_load(df.PROMETHEUS.read_text())
    targets = {
        target
        for job in prometheus["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    for name, service in df.liveml_services(compose).items():
        port = df.environment(service).get("LIVEML_METRICS_PORT")
        if df.command(service.get("command"))[1:2] == ["serve"]:
            assert f"{name}:{port}" in targets, f"{name}'s metrics are not scraped"


@pytest.mark.parametrize("service", ["registry", "worker-1", "gateway"])
def test_stop_grace_covers_in_flight_calls(service: str) -> None:
    compose = df.load_compose()
    spec = compose["services"][service]
    grace = float(df.environment(spec)["LIVEML_SHUTDOWN_GRACE"])
    assert float(spec["stop_grace_period"].removesuffix("s")) > grace


def test_make_secrets_writes_what_compose_mounts(tmp_path: Path) -> None:
    compose = df.load_compose()
    tool = df.make_secrets()
    secrets = tmp_path / "secrets"
    written = tool.make_secrets(secrets)
    for name, secret in compose["secrets"].items():
        path = secrets / Path(secret["file"]).name
        assert path in written, f"secret {name}: {path.name} is not written"
        # Readable by the containers' uid 10001 (Compose bind-mounts it as it is) ...
        assert path.stat().st_mode & 0o777 == 0o644, path.name
    # ... inside a folder no one else may enter.
    assert secrets.stat().st_mode & 0o777 == 0o700
    assert tool.make_secrets(secrets) == [], "a second run keeps what exists"
    # A certificate per service, its common name the service: valid for each Compose host
    # name, and for 127.0.0.1, where the image's HEALTHCHECK connects.
    for service, spec in df.liveml_services(compose).items():
        mounted = dict((t, s) for s, t in df.secret_mounts(spec))
        if "tls_cert" not in mounted:
            continue
        path = secrets / Path(compose["secrets"][mounted["tls_cert"]]["file"]).name
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        assert cn == ("admin" if service == "tokens" else service), (service, cn)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = set(names.get_values_for_type(x509.DNSName))
        ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
        assert set(df.liveml_services(compose)) - {"tokens"} <= dns
        assert "127.0.0.1" in ips


def test_services_talk_mutual_tls_to_each_other() -> None:
    """Every link between liveml services is mutual TLS: each server a service calls
    requires a client certificate from the CA, and each caller shows its own."""
    compose = df.load_compose()
    services = df.liveml_services(compose)
    env = {name: df.environment(spec) for name, spec in services.items()}
    for name in ("registry", "worker-1", "worker-2", "trainer"):
        assert env[name]["LIVEML_TLS_CLIENT_CA"] == "/run/secrets/tls_ca", name
        assert env[name]["HEALTHCHECK_CERT"] == "/run/secrets/tls_cert", name
    for name in ("worker-1", "worker-2", "gateway", "trainer"):
        assert env[name]["LIVEML_REGISTRY_CA"] == "/run/secrets/tls_ca", name
        assert env[name]["LIVEML_REGISTRY_CERT"] == "/run/secrets/tls_cert", name
        assert env[name]["LIVEML_REGISTRY_KEY"] == "/run/secrets/tls_key", name
    assert env["gateway"]["LIVEML_WORKER_CERT"] == "/run/secrets/tls_cert"
    assert env["gateway"]["LIVEML_WORKER_CA"] == "/run/secrets/tls_ca"
    assert env["tokens"]["LIVEML_TLS_CERT"] == "/run/secrets/tls_cert"
    # Each service has a certificate of its own.
    sources = {
        name: dict((t, s) for s, t in df.secret_mounts(spec)).get("tls_cert")
        for name, spec in services.items()
    }
    assigned = [s for s in sources.values() if s]
    assert len(assigned) == len(set(assigned)) == len(services), sources


def test_every_variable_is_a_setting() -> None:
    """liveml ignores unknown LIVEML_* variables, so a misspelt one would go unnoticed:
    each must be a setting of its service. The image runs liveml itself (no entry-point
    shell), so no other variable (a VAR_FILE of a shim, PGPASSWORD) is read either."""
    for name, service in df.liveml_services(df.load_compose()).items():
        argv = df.command(service.get("command"))
        if argv[1:2] != ["serve"]:
            continue
        settings = {f"LIVEML_{field.upper()}" for field in SETTINGS[argv[0]].model_fields}
        for key in df.environment(service):
            if key.startswith("HEALTHCHECK_"):  # read by the image's HEALTHCHECK command
                assert key in df.image_healthcheck()[-1], f"{name}: the HEALTHCHECK reads no {key}"
                continue
            assert key.startswith("LIVEML_"), f"{name}: nothing reads {key}"
            assert key in settings, f"{name}: {key} is no setting of `{argv[0]} serve`"


def test_the_event_stream_is_nats() -> None:
    """The registry, the gateway and the trainer share the JetStream stream on `nats`,
    each started only once NATS is healthy; workers do not use the stream."""
    compose = df.load_compose()
    services = compose["services"]
    nats = services["nats"]
    assert "ports" not in nats, "NATS is reached inside the Compose network only"
    assert any(target == "/data" for _, target, _ in df.volume_mounts(nats))
    assert df.command(nats["command"])[df.command(nats["command"]).index("--store_dir") + 1] == (
        "/data"
    )
    for name in ("registry", "gateway", "trainer"):
        env = df.environment(services[name])
        assert env["LIVEML_EVENT_STREAM"] == "nats://nats:4222", name
        assert df.depends_on(services[name])["nats"] == "service_healthy", name
        settings = SETTINGS[name](_env_file=None, **{"event_stream": env["LIVEML_EVENT_STREAM"]})
        assert settings.event_stream == "nats://nats:4222"  # the setting's pattern takes it
    for name in ("worker-1", "worker-2"):
        assert "LIVEML_EVENT_STREAM" not in df.environment(services[name])
    # They agree on its retention: each process that connects sets the stream's limits
    # to its own settings, so disagreeing ones would undo each other.
    retention = {
        (env["LIVEML_EVENT_RETENTION_SECONDS"], env["LIVEML_EVENT_RETENTION_BYTES"])
        for env in (df.environment(services[n]) for n in ("registry", "gateway", "trainer"))
    }
    assert len(retention) == 1
