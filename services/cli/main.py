"""The `liveml` command: operators' entry point to every service and admin task."""

from __future__ import annotations

from importlib.metadata import version as dist_version
from pathlib import Path

import typer
from rich.console import Console

from services.cli import (
    alerts_cmds,
    audit_cmds,
    canary_cmds,  # noqa: F401  (adds canary, status, pause, ... to rollout_app)
    client,
    data_cmds,
    models_cmds,
    rollout_cmds,
    token_cmds,
    train_cmds,
    versions_cmds,
)
from services.cli.args import JsonFlag
from services.cli.output import print_json
from services.cli.serve_cmds import gateway_app, registry_app, trainer_app, worker_app
from services.common import pki

app = typer.Typer(
    name="liveml",
    help="Serve ML models over gRPC and change them live.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
tls_app = typer.Typer(help="Development certificates for TLS and mutual TLS.", no_args_is_help=True)
app.add_typer(tls_app, name="tls")
app.add_typer(models_cmds.models_app, name="models")
app.add_typer(versions_cmds.versions_app, name="versions")
app.add_typer(rollout_cmds.rollout_app, name="rollout")
app.add_typer(token_cmds.token_app, name="token")
app.add_typer(audit_cmds.audit_app, name="audit")
app.command("alerts")(alerts_cmds.alerts)
app.add_typer(registry_app, name="registry")
app.add_typer(worker_app, name="worker")
app.add_typer(gateway_app, name="gateway")
app.add_typer(trainer_app, name="trainer")
app.add_typer(train_cmds.train_app, name="train")
app.add_typer(train_cmds.learner_app, name="learner")
app.add_typer(data_cmds.data_app, name="data")
console = Console()


@app.command()
def version(json_output: JsonFlag = False) -> None:
    """Print liveml's version and the versions of the runtime it serves with."""
    import grpc
    import onnxruntime

    versions = {
        "liveml": dist_version("liveml"),
        "grpcio": grpc.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    if json_output:
        print_json(versions)
        return
    console.print("  ".join(f"{name} {number}" for name, number in versions.items()))


demo_app = typer.Typer(invoke_without_command=True)
app.add_typer(demo_app, name="demo")


@demo_app.callback()
def demo(
    ctx: typer.Context,
    keep: Path | None = typer.Option(
        None,
        "--keep",
        envvar="LIVEML_DEMO_DIR",
        help="Keep the demo's database, artifacts and process logs in this folder.",
    ),
) -> None:
    """Run the live-update demo on the embedded default (SQLite, local artifacts)."""
    if ctx.invoked_subcommand is not None:
        return
    from services.cli.demo import main as run_demo

    raise typer.Exit(run_demo(keep))


@demo_app.command("online")
def demo_online(
    out: Path = typer.Option(
        Path(".liveml/demo-online"),
        "--out",
        envvar="LIVEML_DEMO_ONLINE_OUT",
        help="Folder for the plot (PNG) and the summary.",
    ),
    keep: Path | None = typer.Option(
        None,
        "--keep",
        envvar="LIVEML_DEMO_ONLINE_DIR",
        help="Keep the processes' database, artifacts and logs in this folder.",
    ),
    phase_examples: int = typer.Option(
        6000,
        "--phase-examples",
        min=500,
        envvar="LIVEML_DEMO_ONLINE_PHASE_EXAMPLES",
        help="Examples of each concept, at least.",
    ),
    rate: int = typer.Option(
        600,
        "--rate",
        min=10,
        envvar="LIVEML_DEMO_ONLINE_RATE",
        help="Examples ingested per second.",
    ),
    phase_seconds: float = typer.Option(
        120.0,
        "--phase-seconds",
        min=5,
        envvar="LIVEML_DEMO_ONLINE_PHASE_SECONDS",
        help="A phase not recovered by then fails the demo.",
    ),
) -> None:
    """An online model tracks a concept that drifts twice while a static one decays:
    a plot of both accuracies and a summary (exit 0 only if what it claims held)."""
    from services.cli.demo_online import Size
    from services.cli.demo_online import main as run_online

    raise typer.Exit(run_online(out, keep, Size(phase_examples, rate, phase_seconds)))


# The host names liveml's own deployments give its services (Compose service names;
# Kubernetes Services, short and in the `liveml` namespace; `liveml-worker`, the name
# the Kubernetes gateway checks on workers it reaches by pod IP), so the stock
# certificates hold there.
DEFAULT_SANS = (
    "localhost",
    "127.0.0.1",
    "::1",
    "registry",
    "gateway",
    "worker",
    "worker-1",
    "worker-2",
    "trainer",
    "liveml-registry",
    "liveml-gateway",
    "liveml-worker",
    "liveml-trainer",
    "liveml-registry.liveml.svc",
    "liveml-gateway.liveml.svc",
    "liveml-registry.liveml.svc.cluster.local",
    "liveml-gateway.liveml.svc.cluster.local",
)


@tls_app.command("init")
def tls_init(
    directory: Path = typer.Argument(..., help="Folder to write the CA and certificates into."),
    names: list[str] = typer.Option(
        ["registry", "worker", "gateway", "trainer", "client"],
        "--name",
        help="Certificates to issue, one per identity (its common name).",
    ),
    sans: list[str] = typer.Option(
        [],
        "--san",
        help="Host names or IP addresses every certificate is valid for (repeat it); "
        "default: localhost and the service names of liveml's Compose and Kubernetes "
        "deployments.",
    ),
    json_output: JsonFlag = False,
) -> None:
    """Create a CA and one certificate per name (server and client use, for mutual TLS).

    Each certificate's common name is its identity, which `--cert-roles` maps to a role.
    """
    hosts = tuple(sans) or DEFAULT_SANS
    for host in hosts:
        if not host.strip() or any(c.isspace() for c in host):
            client.fail(f"--san {host!r}: expected a host name or IP address")
    ca = pki.create_ca(directory)
    issued = {name: pki.issue(ca, name, directory, hosts=hosts) for name in names}
    if json_output:
        print_json(
            {
                "ca": str(ca.cert),
                "certificates": {
                    name: {"cert": str(i.cert), "key": str(i.key)} for name, i in issued.items()
                },
                "hosts": list(hosts),
            }
        )
        return
    console.print(f"CA         {ca.cert}")
    for name, i in issued.items():
        console.print(f"{name:<10} {i.cert}  {i.key}")
    console.print(f"valid for  {', '.join(hosts)}")


if __name__ == "__main__":
    app()
