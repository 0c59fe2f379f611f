"""Write the secret files that deploy/compose.yaml mounts (into deploy/secrets/ by default).

    .venv/bin/python deploy/make_secrets.py [DIR] [--host NAME ...] [--renew-certificate]

Files already there are kept, so running it again changes nothing:

    artifact_key            base64 AES-256 key: artifacts are encrypted at rest
    artifact_old_keys       retired keys, "id:base64,id:base64" (empty until a rotation)
    audit_key               base64 HMAC-SHA256 key of the registry's audit trail
    audit_old_keys          retired audit keys, "id:base64,id:base64" (empty until a rotation)
    postgres_password       PostgreSQL password of the `liveml` user
    grafana_admin_password  Grafana's `admin` password
    checkpoint_key          base64 key that seals online learners' checkpoints
    ca.pem, ca-key.pem      a development CA (keep ca-key.pem to issue more certificates)
    NAME.pem, NAME-key.pem  one certificate per identity (registry, gateway, worker-1,
                            worker-2, trainer, admin): each service serves TLS with its own
                            and shows it as its client certificate (mutual TLS between the
                            services); admin is for operators' `liveml` and the `tokens`
                            one-shot. Valid for the Compose host names, localhost and
                            127.0.0.1 (health checks); the common name is the identity.

--renew-certificate issues the certificates again from the same CA, for instance for
another worker's host name (--host worker-3); clients trusting ca.pem need no change.

Compose bind-mounts secret files as they are on the host (it cannot change their owner),
and the services run as uid 10001: the files are therefore readable by all (0644) inside
a folder only its owner may enter (0700). Production brings its keys and certificates
from its own PKI and secret store instead.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from pathlib import Path

from services.common import pki

IDENTITIES = ("registry", "gateway", "worker-1", "worker-2", "trainer", "admin")
HOSTS = ("registry", "worker-1", "worker-2", "gateway", "trainer", "localhost", "127.0.0.1", "::1")


def _write(path: Path, text: str) -> bool:
    if path.exists():
        return False
    path.write_text(text)
    path.chmod(0o644)
    return True


def make_secrets(
    directory: Path, hosts: tuple[str, ...] = HOSTS, renew_certificate: bool = False
) -> list[Path]:
    """Create the missing secret files in `directory`; return the ones written."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    written = []
    values = {
        # No trailing newline: not every reader of a secret file strips one.
        "artifact_key": base64.b64encode(os.urandom(32)).decode(),
        "artifact_old_keys": "",
        "audit_key": base64.b64encode(os.urandom(32)).decode(),
        "audit_old_keys": "",
        "postgres_password": secrets.token_urlsafe(24),
        "grafana_admin_password": secrets.token_urlsafe(18),
        "checkpoint_key": base64.b64encode(os.urandom(32)).decode(),
    }
    for name, text in values.items():
        if _write(directory / name, text):
            written.append(directory / name)
    ca = pki.Issued(directory / "ca.pem", directory / "ca-key.pem")
    if not (ca.cert.exists() and ca.key.exists()):
        ca = pki.create_ca(directory)
        ca.cert.chmod(0o644)
        written += [ca.cert, ca.key]
        renew_certificate = True
    for identity in IDENTITIES:
        issued = pki.Issued(directory / f"{identity}.pem", directory / f"{identity}-key.pem")
        if renew_certificate or not (issued.cert.exists() and issued.key.exists()):
            issued = pki.issue(ca, identity, directory, hosts=hosts)
            issued.cert.chmod(0o644)
            issued.key.chmod(0o644)
            written += [issued.cert, issued.key]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "directory", nargs="?", type=Path, default=Path(__file__).parent / "secrets"
    )
    parser.add_argument(
        "--host", action="append", default=[], help="Another name the certificate is valid for."
    )
    parser.add_argument(
        "--renew-certificate", action="store_true", help="Issue the certificates again (same CA)."
    )
    args = parser.parse_args(argv)
    written = make_secrets(args.directory, (*HOSTS, *args.host), args.renew_certificate)
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"{args.directory}: every secret file exists already")
    return 0


if __name__ == "__main__":
    sys.exit(main())
