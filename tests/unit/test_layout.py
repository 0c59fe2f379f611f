"""The layout's promises, read from the imports: `services/common` imports no service
and not the data plane's package; the registry and the trainer know no data-plane
internals; no service imports another (they talk through protos)."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[2] / "services"
PARTS = ("registry", "worker", "gateway", "trainer", "cli", "dataplane", "common")


def imported(package: str) -> dict[str, set[str]]:
    """For each module of `package`, the liveml packages it imports."""
    found: dict[str, set[str]] = {}
    for path in (SERVICES / package).rglob("*.py"):
        if "gen" in path.parts:
            continue
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        found[str(path.relative_to(SERVICES))] = {
            n.split(".")[1] for n in names if n.startswith("services.") and n.count(".") >= 1
        }
    return found


def test_common_imports_no_service_and_not_the_data_plane() -> None:
    for module, parts in imported("common").items():
        assert parts <= {"common"}, (module, parts)


def test_the_data_plane_package_imports_only_common() -> None:
    for module, parts in imported("dataplane").items():
        assert parts <= {"common", "dataplane"}, (module, parts)


def test_no_service_imports_another() -> None:
    for service in ("registry", "trainer", "worker", "gateway"):
        allowed = {service, "common"} | (
            {"dataplane"} if service in ("worker", "gateway") else set()
        )
        for module, parts in imported(service).items():
            assert parts <= allowed, (module, parts - allowed)
    assert set(PARTS) >= {p.name for p in SERVICES.iterdir() if (p / "__init__.py").exists()}
