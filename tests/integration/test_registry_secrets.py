"""The registry's secrets from files (--artifact-key-file, --artifact-old-keys-file,
--database-password-file), a bootstrap admin token the operator supplies, and one admin
when registries bootstrap on one empty database together.

Most tests run `liveml registry serve` as a process: what it reads, refuses and prints is
what an operator gets."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc import aio

from services.common.auth import Role
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.registry import app, security
from services.registry.audit_chain import AuditChain
from services.registry.secrets import SecretsError, resolved_secrets
from services.registry.store import Store
from tests.helpers.models import linear
from tests.helpers.procs import ROOT, Proc, python_module, registry_process
from tests.helpers.registry import auth, database, registry_settings, stream, upload


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def admin_secret(token_id: str = "ops-admin") -> str:
    return f"lml_{token_id}_{secrets.token_urlsafe(32)}"


@contextmanager
def serving(root: Path, **env: str) -> Iterator[tuple[Proc, int]]:
    """A registry process (SQLite under `root` unless `env` says otherwise) and its port."""
    proc, port = registry_process(root, **env)
    try:
        yield proc, port
    finally:
        code = proc.stop()
    assert code == 0, "".join(proc.output)


def channel(port: int) -> aio.Channel:
    return aio.insecure_channel(f"127.0.0.1:{port}")


def refused_start(root: Path, **env: str) -> str:
    """Start `liveml registry serve`, expect it to refuse (exit 2); return what it printed."""
    proc = python_module(
        "services.cli.main",
        {
            "LIVEML_DATABASE_URL": f"sqlite+aiosqlite:///{root}/registry.db",
            "LIVEML_ARTIFACT_DIR": str(root / "artifacts"),
            "LIVEML_ADMIN_TOKEN_FILE": str(root / "admin.token"),
            "COLUMNS": "400",  # the error box must not wrap the message
            **env,
        },
        "registry",
        "serve",
        "--port",
        "0",
        "--metrics-port",
        "-1",
    )
    try:
        code = proc.popen.wait(timeout=60)
    finally:
        proc.stop()
    proc.expect("╰", timeout=5)  # the error box's last line: the output has been read
    output = "".join(proc.output)
    assert code == 2, output
    return output


async def download(stub: rpb_grpc.RegistryServiceStub, name: str, token: str) -> bytes:
    request = rpb.DownloadArtifactRequest(name=name)
    parts = [m async for m in stub.DownloadArtifact(request, metadata=auth(token))]
    return b"".join(p.chunk for p in parts[1:])


# --- artifact keys ---------------------------------------------------------------------


async def test_artifact_keys_from_files(tmp_path: Path) -> None:
    k1, k2 = new_key(), new_key()
    key_file, old_file = tmp_path / "artifact_key", tmp_path / "artifact_old_keys"
    key_file.write_text(k1 + "\n")
    old_file.write_text("\n")  # empty: no retired keys yet
    env = {
        "LIVEML_ARTIFACT_KEY_FILE": str(key_file),
        "LIVEML_ARTIFACT_OLD_KEYS_FILE": str(old_file),
        "LIVEML_ARTIFACT_KEY_ID": "k1",
    }
    data = linear(tmp_path / "lin.onnx", n_in=64, n_out=64).read_bytes()
    with serving(tmp_path, **env) as (first, port):
        admin = (tmp_path / "admin.token").read_text().strip()
        async with channel(port) as ch:
            stub = rpb_grpc.RegistryServiceStub(ch)
            await stub.CreateModel(rpb.CreateModelRequest(model_id="lin"), metadata=auth(admin))
            reply = await stub.CreateVersion(
                stream(upload("models/lin", data)), metadata=auth(admin)
            )
            v1 = reply.version
            assert await download(stub, v1.name, admin) == data
    assert v1.artifact.key_id == "k1"
    [blob] = [p for p in (tmp_path / "artifacts" / "blobs").rglob("*") if p.is_file()]
    sealed = blob.read_bytes()
    assert data[:1024] not in sealed and len(sealed) > len(data), "stored encrypted"

    # Rotated: k2 from the key file, k1 from the old-keys file still opens v1.
    key_file.write_text(k2 + "\n")
    old_file.write_text(f"k1:{k1}\n")
    with serving(tmp_path, **{**env, "LIVEML_ARTIFACT_KEY_ID": "k2"}) as (second, port):
        async with channel(port) as ch:
            stub = rpb_grpc.RegistryServiceStub(ch)
            assert await download(stub, v1.name, admin) == data
            other = linear(tmp_path / "other.onnx", n_in=64, n_out=64, seed=1).read_bytes()
            reply = await stub.CreateVersion(
                stream(upload("models/lin", other)), metadata=auth(admin)
            )
            assert reply.version.artifact.key_id == "k2"
            assert await download(stub, reply.version.name, admin) == other
    printed = "".join(first.output + second.output)
    assert k1 not in printed and k2 not in printed


@pytest.mark.parametrize("name", ["artifact_key", "artifact_old_keys"])
def test_a_value_and_its_file_together_are_refused(tmp_path: Path, name: str) -> None:
    value = new_key() if name == "artifact_key" else f"k0:{new_key()}"
    (tmp_path / "secret").write_text(value)
    variable = f"LIVEML_{name.upper()}"
    env = {
        "LIVEML_ARTIFACT_KEY": new_key(),  # old keys need a current key (replaced for the key)
        variable: value,
        f"{variable}_FILE": str(tmp_path / "secret"),
    }
    output = refused_start(tmp_path, **env)
    flag = "--" + name.replace("_", "-")
    assert f"set {flag} ({variable}) or {flag}-file ({variable}_FILE), not both" in output
    assert value not in output
    assert not (tmp_path / "registry.db").exists(), "refused before touching the database"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "cannot read --artifact-key-file (LIVEML_ARTIFACT_KEY_FILE) {path}: No such"),
        ("empty", "--artifact-key-file (LIVEML_ARTIFACT_KEY_FILE) {path} is empty"),
        ("not-base64", "artifact key 'k1' is not valid base64"),
        ("short", "artifact key 'k1' must be 32 bytes (base64), got 16"),
        ("old-not-base64", "artifact key 'k0' is not valid base64"),
    ],
)
def test_unusable_key_files_are_refused(tmp_path: Path, case: str, message: str) -> None:
    path = tmp_path / "key"
    old = tmp_path / "old"
    old.write_text("")
    contents = {
        "empty": "\n",
        "not-base64": "not base64!\n",
        "short": base64.b64encode(os.urandom(16)).decode(),
    }
    path.write_text(contents.get(case, new_key()))
    if case == "missing":
        path.unlink()
    if case == "old-not-base64":
        old.write_text("k0:%%%\n")
    settings = registry_settings(
        "sqlite+aiosqlite:///unused.db",
        tmp_path,
        artifact_key_file=path,
        artifact_old_keys_file=old,
    )
    with pytest.raises(SecretsError) as err:
        resolved_secrets(settings)
    assert message.format(path=path) in str(err.value)


# --- the database password -------------------------------------------------------------


def test_a_password_in_the_url_and_a_password_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("from-the-file\n")
    output = refused_start(
        tmp_path,
        LIVEML_DATABASE_URL="postgresql+asyncpg://liveml:in-the-url@127.0.0.1:1/liveml",
        LIVEML_DATABASE_PASSWORD_FILE=str(tmp_path / "password"),
    )
    assert (
        "--database-url (LIVEML_DATABASE_URL) holds a password and --database-password-file "
        "(LIVEML_DATABASE_PASSWORD_FILE) is set: give the password in one place only" in output
    )
    assert "in-the-url" not in output and "from-the-file" not in output


@pytest.mark.parametrize(
    ("url", "content", "message"),
    [
        (
            "sqlite+aiosqlite:///x.db",
            "pw",
            "--database-password-file (LIVEML_DATABASE_PASSWORD_FILE) is set, "
            "but SQLite has no password",
        ),
        (
            "postgresql+asyncpg://liveml@db/liveml",
            " \n",
            "--database-password-file (LIVEML_DATABASE_PASSWORD_FILE) {path} is empty",
        ),
        (
            "not a url",
            "pw",
            "--database-url (LIVEML_DATABASE_URL) is not a SQLAlchemy URL",
        ),
    ],
)
def test_unusable_password_settings_are_refused(
    tmp_path: Path, url: str, content: str, message: str
) -> None:
    path = tmp_path / "password"
    path.write_text(content)
    settings = registry_settings(url, tmp_path, database_password_file=path)
    with pytest.raises(SecretsError) as err:
        resolved_secrets(settings)
    assert message.format(path=path) in str(err.value)


def test_the_password_goes_into_the_url_object_only(tmp_path: Path) -> None:
    password = "p@ss:w/rd%" + secrets.token_urlsafe(8)
    (tmp_path / "password").write_text(password + "\n")
    settings = registry_settings(
        "postgresql+asyncpg://liveml@db.example:5432/liveml",
        tmp_path,
        database_password_file=tmp_path / "password",
    )
    url = resolved_secrets(settings).database_url
    assert url.password == password  # stripped, and not mangled by its URL escaping
    assert (url.username, url.host, url.port, url.database) == (
        "liveml",
        "db.example",
        5432,
        "liveml",
    )
    assert password not in str(url) and password not in repr(url)
    assert password not in str(Store(url).engine.url)


@pytest.mark.postgres
async def test_postgres_with_the_password_from_a_file(tmp_path: Path) -> None:
    """The local PostgreSQL trusts local connections, so any password connects: this
    proves the file is read and used, and that the password is printed nowhere."""
    password = "pw-" + secrets.token_urlsafe(16)
    (tmp_path / "password").write_text(password + "\n")
    async with database("postgres", tmp_path) as url:
        with serving(
            tmp_path,
            LIVEML_DATABASE_URL=url,
            LIVEML_DATABASE_PASSWORD_FILE=str(tmp_path / "password"),
            LIVEML_LOG_LEVEL="DEBUG",
        ) as (proc, port):
            admin = (tmp_path / "admin.token").read_text().strip()
            async with channel(port) as ch:
                stub = rpb_grpc.RegistryServiceStub(ch)
                await stub.CreateModel(rpb.CreateModelRequest(model_id="pg"), metadata=auth(admin))
                reply = await stub.ListModels(rpb.ListModelsRequest(), metadata=auth(admin))
                assert [m.name for m in reply.models] == ["models/pg"]
    printed = "".join(proc.output)
    assert "registry listening on" in printed
    assert password not in printed


# --- the bootstrap admin token ---------------------------------------------------------


async def test_a_supplied_admin_token_becomes_the_admin(tmp_path: Path) -> None:
    secret = admin_secret()
    token_file = tmp_path / "admin.token"
    token_file.write_text(secret + "\n")
    token_file.chmod(0o400)  # as a mounted secret: read, never written
    before = token_file.stat()
    with serving(tmp_path) as (proc, port):
        proc.expect(f"bootstrap admin token tokens/ops-admin taken from {token_file}")
        async with channel(port) as ch:
            stub = rpb_grpc.RegistryServiceStub(ch)
            await stub.CreateModel(rpb.CreateModelRequest(model_id="iris"), metadata=auth(secret))
            tokens = (await stub.ListTokens(rpb.ListTokensRequest(), metadata=auth(secret))).tokens
            assert [(t.name, t.display_name, t.role) for t in tokens] == [
                ("tokens/ops-admin", "bootstrap admin", rpb.ROLE_ADMIN)
            ]
            # The id alone is nothing: the secret must match.
            with pytest.raises(aio.AioRpcError) as err:
                await stub.ListModels(rpb.ListModelsRequest(), metadata=auth(admin_secret()))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "the bearer token is not valid" in str(err.value.details())
    after = token_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert token_file.read_text() == secret + "\n"
    assert secret.split("_", 2)[2] not in "".join(proc.output)


def test_a_malformed_admin_token_file_is_refused_and_kept(tmp_path: Path) -> None:
    token_file = tmp_path / "admin.token"
    token_file.write_text("lml_ops_tooshort\n")
    output = refused_start(tmp_path)
    assert (
        f"--admin-token-file (LIVEML_ADMIN_TOKEN_FILE) {token_file} holds no valid liveml "
        "token: expected lml_<id>_<secret>" in output
    )
    assert "tooshort" not in output
    assert token_file.read_text() == "lml_ops_tooshort\n"


@pytest.mark.parametrize("supplied", [False, True], ids=["generated", "supplied"])
async def test_registries_bootstrapping_together_make_one_admin(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, supplied: bool
) -> None:
    """Every registry passes the quick "no tokens yet" look, as in a race on an empty
    database; the look again under the write lock lets only one create the admin."""

    async def none_yet(store: Store) -> int:
        return 0

    monkeypatch.setattr(security, "count_tokens", none_yet)
    secret = admin_secret("shared")
    files = [tmp_path / f"admin-{i}.token" for i in range(4)]
    if supplied:
        files = [tmp_path / "admin.token"] * 4  # one volume shared by the replicas
        files[0].write_text(secret + "\n")
    chain = AuditChain.local(tmp_path / "artifacts", "k1")
    stores = [Store(db_url, audit=chain) for _ in files]
    try:
        await stores[0].migrate()
        await asyncio.gather(
            *(
                app.bootstrap_admin(registry_settings(db_url, tmp_path, admin_token_file=f), s)
                for f, s in zip(files, stores, strict=True)
            )
        )
        async with stores[0].read() as session:
            assert await security.count_tokens_in(session) == 1
        written = sorted({f for f in files if f.exists()})
        assert len(written) == 1, written
        token = written[0].read_text().strip()
        if supplied:
            assert token == secret
        principal = await security.TokenAuthenticator(stores[0]).authenticate(token, None)
        assert principal.role == Role.ADMIN
    finally:
        for store in stores:
            await store.close()


# --- `liveml token create --secret-only` -----------------------------------------------


def test_token_create_secret_only_prints_just_the_secret(tmp_path: Path) -> None:
    with serving(tmp_path) as (_, port):
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LIVEML_")},
            "LIVEML_REGISTRY": f"127.0.0.1:{port}",
            "LIVEML_TOKEN_FILE": str(tmp_path / "admin.token"),
        }

        def liveml(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "services.cli.main", *args],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )

        made = liveml("token", "create", "ci", "--role", "viewer", "--secret-only")
        assert made.returncode == 0, made.stderr
        secret = made.stdout.removesuffix("\n")
        assert made.stdout == secret + "\n" and security.well_formed(secret), made.stdout
        listed = liveml("models", "list", "--json", "--token", secret)
        assert listed.returncode == 0, listed.stderr
        both = liveml("token", "create", "ci", "--role", "viewer", "--secret-only", "--json")
        assert both.returncode == 2
        assert "give --json or --secret-only, not both" in both.stderr
