"""Reading the deployment files as Docker and Compose would: the Dockerfile's
instructions, and deploy/compose.yaml with its `${VAR:-default}` interpolation and
YAML merge keys resolved."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
K8S = DEPLOY / "k8s"

# --- Dockerfile ---------------------------------------------------------------------------


def instructions(text: str | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text() if text is None else text
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def stages(text: str | None = None) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (the ARGs before the first FROM are dropped)."""
    result: list[list[tuple[str, str]]] = []
    for word, args in instructions(text):
        if word == "FROM":
            result.append([])
        if result:
            result[-1].append((word, args))
    return result


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form ENTRYPOINT, CMD or HEALTHCHECK ... CMD."""
    start = args.index("[")
    value = json.loads(args[start:])
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def image_entrypoint() -> list[str]:
    (args,) = [a for w, a in final_stage() if w == "ENTRYPOINT"]
    return exec_form(args)


def image_healthcheck() -> list[str]:
    (args,) = [a for w, a in final_stage() if w == "HEALTHCHECK"]
    command = exec_form(args)
    assert args[: args.index("[")].rstrip().endswith("CMD"), args
    return command


def image_copies() -> dict[str, Path]:
    """Files the final stage copies from the build context: in-image path -> repo path."""
    copies = {}
    for word, args in final_stage():
        if word == "COPY" and "--from" not in args:
            source, dest = [w for w in shlex.split(args) if not w.startswith("--")]
            copies[dest] = ROOT / source
    return copies


# --- Compose ------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default}, $VAR, $$."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            if match[0] == "$$":
                return "$"
            name = match[1] or match[3]
            return env.get(name) or (match[2] or "")

        return _VARIABLE.sub(substitute, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    return value


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return interpolate(data, env or {})  # type: ignore[no-any-return]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each short-syntax volume entry."""
    mounts = []
    for entry in service.get("volumes") or []:
        source, target, *mode = entry.split(":")
        mounts.append((source, target, "ro" in mode))
    return mounts


def secret_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(secret, name under /run/secrets/) for each secret a service is granted, in the
    short (`- name`) or long (`- source: s, target: t`) syntax."""
    out = []
    for entry in service.get("secrets", []):
        if isinstance(entry, str):
            out.append((entry, entry))
        else:
            out.append((entry["source"], entry.get("target", entry["source"])))
    return out


def liveml_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the liveml image (built from deploy/docker/Dockerfile)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if (service.get("build") or {}).get("dockerfile") == "deploy/docker/Dockerfile"
    }


def start_order(services: dict[str, dict[str, Any]]) -> list[str]:
    """The services in an order where each comes after what it depends on."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {' -> '.join((*path, name))}"
        if name in order or name not in services:
            return
        for dep in depends_on(services[name]):
            visit(dep, (*path, name))
        order.append(name)

    for name in services:
        visit(name, ())
    return order


def make_secrets() -> ModuleType:
    """deploy/make_secrets.py as a module (deploy/ is no package)."""
    spec = importlib.util.spec_from_file_location("make_secrets", DEPLOY / "make_secrets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
