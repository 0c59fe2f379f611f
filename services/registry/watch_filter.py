"""What part of the change feed a watcher asked for (WatchRequest.models and .kinds),
checked once when its watch starts, and the feed's responses cut down to it.

The feed reads each change once and every watcher is handed the same response; a
filtered watcher is handed that response cut to its filter, cut once per read and
filter (kept on the read, `_Batch.cut`), so fifty gateways with the same filter cost
one pass over the events, not fifty. Revisions stay the feed's global ones: a
filtered watcher's `revision` moves past changes it was not sent, by progress
messages, so it resumes from where the whole feed was.

A model filter narrows the model-scoped kinds (model, version, rollout: named
`models/{model}...`); workers and credentials belong to no model and are narrowed
only by kind. A DELETE of `models/{m}` takes the model's versions and rollout with
it, so it is sent to a watcher of any of those three kinds.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.errors import InvalidArgument, PermissionDenied
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.ids import MAX_WATCH_MODELS
from services.registry import names

Kind = rpb.WatchRequest.Kind
# The WatchEvent `resource` each kind stands for.
KINDS: dict[int, str] = {
    Kind.KIND_MODEL: "model",
    Kind.KIND_VERSION: "version",
    Kind.KIND_ROLLOUT: "rollout",
    Kind.KIND_WORKER: "worker",
    Kind.KIND_CREDENTIAL: "credential",
}
EVERY_KIND = frozenset(KINDS.values())
MODEL_SCOPED = frozenset({"model", "version", "rollout"})


@dataclass(frozen=True)
class WatchFilter:
    """Model ids (empty = every model) and the resource kinds a watcher is sent."""

    models: frozenset[str] = frozenset()
    kinds: frozenset[str] = EVERY_KIND

    @property
    def everything(self) -> bool:
        return not self.models and self.kinds == EVERY_KIND

    def keeps(self, event: rpb.WatchEvent) -> bool:
        name = event.resource_name
        kind = event.WhichOneof("resource")
        if name.startswith("models/"):
            parts = name.split("/", 3)
            if self.models and parts[1] not in self.models:
                return False
            if kind is None and len(parts) == 2:  # the model's DELETE: its versions too
                return not self.kinds.isdisjoint(MODEL_SCOPED)
            if kind is None:
                kind = "rollout" if len(parts) == 3 else "version"
        elif kind is None:
            kind = "worker" if name.startswith("workers/") else "credential"
        return kind in self.kinds

    def events(self, events: list[rpb.WatchEvent]) -> list[rpb.WatchEvent]:
        return list(events) if self.everything else [e for e in events if self.keeps(e)]

    def cut(self, response: rpb.WatchResponse) -> rpb.WatchResponse:
        """`response` with only the events kept: the same message when all are."""
        if self.everything:
            return response
        kept = [e for e in response.events if self.keeps(e)]
        if len(kept) == len(response.events):
            return response
        return rpb.WatchResponse(kind=response.kind, revision=response.revision, events=kept)


def parse(request: rpb.WatchRequest, credentials: bool) -> WatchFilter:
    """The filter `request` asks for; `credentials` = the caller may see token digests
    (without it they are left out of an unfiltered watch, and refused when asked for)."""
    if len(request.models) > MAX_WATCH_MODELS:
        raise InvalidArgument(
            f"models: at most {MAX_WATCH_MODELS} models per watch, got {len(request.models)}"
        )
    models = set()
    for i, name in enumerate(request.models):
        try:
            models.add(names.check_id("model", names.simple("models", name)))
        except InvalidArgument as exc:
            raise InvalidArgument(
                f"models[{i}]: expected a model name like 'models/iris' (or 'iris'), got "
                f"{name!r}: {exc.message}"
            ) from None
    kinds = set()
    for i, value in enumerate(request.kinds):
        if value not in KINDS:
            expected = ", ".join(Kind.Name(k) for k in KINDS)
            raise InvalidArgument(
                f"kinds[{i}]: unknown kind {value}; expected one of {expected} "
                "(or no kinds for every kind)"
            )
        kinds.add(KINDS[value])
    if "credential" in kinds and not credentials:
        raise PermissionDenied(
            "kinds: KIND_CREDENTIAL is sent only to watchers whose role is worker, gateway or admin"
        )
    chosen = frozenset(kinds) if kinds else EVERY_KIND
    if not credentials:
        chosen -= {"credential"}
    return WatchFilter(frozenset(models), chosen)
