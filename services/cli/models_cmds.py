"""`liveml models`: named signatures that versions belong to."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

import typer

from services.cli.args import (
    JsonFlag,
    ModelArg,
    model_id,
    model_name,
)
from services.cli.client import Connection, all_pages, connect, connected
from services.cli.output import (
    mapping_text,
    print_fields,
    print_json,
    print_json_list,
    print_table,
    time_text,
)
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb

models_app = typer.Typer(
    help="Models: named signatures that versions belong to.", no_args_is_help=True
)


def _tensor(spec: rpb.TensorSpec) -> str:
    return f"{spec.name} {spec.datatype}[{','.join(str(d) for d in spec.shape)}]"


def signature_text(signature: rpb.Signature) -> str:
    inputs = ", ".join(_tensor(t) for t in signature.inputs) or "-"
    outputs = ", ".join(_tensor(t) for t in signature.outputs) or "-"
    return f"in: {inputs}\nout: {outputs}"


def _model_fields(model: rpb.Model) -> list[tuple[str, str]]:
    return [
        ("name", model.name),
        ("description", model.description),
        ("signature", signature_text(model.signature)),
        ("latest version", str(model.latest_version or "-")),
        ("aliases", mapping_text(sorted(model.aliases.items()))),
        ("labels", mapping_text(sorted(model.labels.items()))),
        ("created", time_text(model.create_time)),
        ("updated", time_text(model.update_time)),
    ]


@models_app.command("list")
@connected
def models_list(conn: Connection, json_output: JsonFlag = False) -> None:
    """List models."""
    with connect(conn) as registry:

        def page(token: str) -> tuple[Iterable[rpb.Model], str]:
            resp: rpb.ListModelsResponse = registry.ListModels(
                rpb.ListModelsRequest(page_token=token)
            )
            return resp.models, resp.next_page_token

        models = all_pages(page)
    if json_output:
        print_json_list(models)
        return
    print_table(
        ("name", "latest", "aliases", "description", "created"),
        (
            (
                m.name,
                str(m.latest_version or "-"),
                mapping_text(sorted(m.aliases.items())),
                m.description,
                time_text(m.create_time),
            )
            for m in models
        ),
    )


@models_app.command("show")
@connected
def models_show(conn: Connection, model: ModelArg, json_output: JsonFlag = False) -> None:
    """Show a model: signature, aliases, latest version."""
    with connect(conn) as registry:
        resp: rpb.GetModelResponse = registry.GetModel(rpb.GetModelRequest(name=model_name(model)))
    if json_output:
        print_json(resp)
        return
    print_fields(_model_fields(resp.model))


@models_app.command("create")
@connected
def models_create(
    conn: Connection,
    model: ModelArg,
    description: Annotated[str, typer.Option(help="What the model does.")] = "",
    json_output: JsonFlag = False,
) -> None:
    """Create a model; its versions are pushed with `liveml versions push`."""
    request = rpb.CreateModelRequest(
        model_id=model_id(model), model=rpb.Model(description=description)
    )
    with connect(conn) as registry:
        resp: rpb.CreateModelResponse = registry.CreateModel(request)
    if json_output:
        print_json(resp)
        return
    print_fields(_model_fields(resp.model), title="created")
