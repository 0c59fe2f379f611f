"""`liveml demo` (what `make run` runs): the founding workflow, with no human step after
start — only data goes in.

On the embedded default (SQLite and a local artifact folder, no other server) it starts
a registry, two workers, a gateway and a trainer, declares a model and its training
policy, and from then on only feeds data: one CSV upload (`liveml data push`) and
examples sent to the gateway, then clients whose every answer is followed by its true
label. The trainer does the rest: the volume of new examples trains v1, which takes the
traffic; more live data trains a candidate that canaries and is promoted; the concept
then shifts, the AccuracyDrop alert retrains, and the new model is promoted; a file with
scrambled labels makes a candidate the gate rejects (no traffic, its failing check
shown); a stale export of the old concept makes one that passes offline and is rolled
back on live feedback. The demo's code registers no version and sets no rollout.

It ends with what each trigger, run, gate and canary did, and exits 0 only if every
step did what it should, no client request failed and the audit trail is intact.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
from google.protobuf.duration_pb2 import Duration
from grpc import aio

from services.cli import demo_traffic as data
from services.cli.demo_cluster import Cluster, DemoFailure, Services, start, until
from services.cli.demo_report import console, describe, failed_checks, summary
from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.training.v1 import training_pb2 as tpb

MODEL = data.MODEL
Run = tpb.TrainingRun
Phase = rpb.AnalysisStatus
FINAL = (Run.STATE_SUCCEEDED, Run.STATE_REJECTED, Run.STATE_FAILED)
DONE = (Phase.PHASE_PROMOTED, Phase.PHASE_ROLLED_BACK)
# The volume trigger: far more than live feedback (80 labels/s at most) brings between a
# retrain and the alert a shift raises, even with a slow canary, so the alert's retrain is
# the one that answers the shift; files and the gateway's example stream reach it at once.
NEW_EXAMPLES = 6000
WINDOW, HOLDOUT = 300, 100
WITHIN = 120.0  # seconds any one step may take
WHOLE = 900.0  # seconds the whole demo may take (a hung step fails it, never hangs it)


def seconds(value: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def policy() -> tpb.TrainingPolicy:
    return tpb.TrainingPolicy(
        name=f"models/{MODEL}/trainingPolicy",
        task=tpb.TRAINING_TASK_CLASSIFICATION,
        estimator=tpb.Estimator(
            class_path="sklearn.linear_model.LogisticRegression", params={"max_iter": "1000"}
        ),
        features=data.COLUMNS,
        label="y",
        # The newest 350 examples, the newest 100 of them held out: the model follows the
        # data as it is now.
        window=tpb.TrainingWindow(last_rows=WINDOW),
        holdout=tpb.Holdout(rows=HOLDOUT),
        triggers=tpb.TrainingTriggers(min_new_examples=NEW_EXAMPLES, on_alert=True),
        cooldown=seconds(5),
        gate=tpb.GatePolicy(
            min_holdout_rows=50,
            floors={"accuracy": 0.75},
            max_regression={"accuracy": 0.05},
            non_inferiority_margin=0.05,
        ),
        approval=tpb.APPROVAL_MODE_AUTO,
        canary=rpb.AnalysisPolicy(
            steps=[10, 50, 100],
            step_interval=seconds(4),
            min_requests=15,
            min_feedback=12,
            # On a busy machine a step may take a few intervals to see enough answers
            # and labels: wait for them rather than give up.
            max_idle_intervals=15,
            max_accuracy_drop=0.05,
            # Every version here is the same small network: a tail latency apart is the
            # shared box's noise, not the model's (a real regression is several times).
            max_p99_latency_ratio=3.0,
            ready_timeout=seconds(60),
        ),
    )


def signature() -> rpb.Signature:
    return rpb.Signature(
        inputs=[rpb.TensorSpec(name=data.INPUT, datatype="FP32", shape=[-1, data.WIDTH])],
        outputs=[
            rpb.TensorSpec(name="label", datatype="INT64", shape=[-1]),
            rpb.TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2]),
        ],
    )


class Demo:
    c: Cluster  # once started
    tallies: dict[tuple[str, str], data.Tally]

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.services = Services(workdir)
        self.steps: list[tuple[str, str]] = []
        self.seen = 0  # runs already accounted for
        self.rng = np.random.default_rng(5)

    def step(self, title: str, outcome: str) -> None:
        self.steps.append((title, outcome))
        console.print(f"[bold green]✓[/] [bold]{title}[/]: {outcome}")

    async def run(self) -> tuple[list[Run], list[rpb.VersionMetrics]]:
        try:
            async with asyncio.timeout(WHOLE):
                return await self._run()
        except TimeoutError:
            raise DemoFailure(f"the demo took longer than {WHOLE:g} s") from None
        finally:
            self.services.stop()

    # --- what the demo asks the registry (reads only) ---------------------------------

    async def runs(self) -> list[Run]:
        reply = await self.c.training.ListTrainingRuns(
            tpb.ListTrainingRunsRequest(parent=f"models/{MODEL}", page_size=100), metadata=self.c.md
        )
        return sorted(reply.runs, key=lambda r: r.number)

    async def next_run(self, what: str, canary: bool = False) -> Run:
        """The first run after those already seen, once it ended (and, with `canary`,
        once its canary ended)."""

        async def ended() -> Run | None:
            for run in await self.runs():
                if run.number <= self.seen or run.state not in FINAL:
                    continue
                if canary and run.state == Run.STATE_SUCCEEDED and run.canary_phase not in DONE:
                    return None
                return run
            return None

        run = await until(ended, WITHIN, what)
        self.seen = run.number
        return run

    async def rollout(self) -> rpb.Rollout:
        reply = await self.c.stub.GetRollout(
            rpb.GetRolloutRequest(name=f"models/{MODEL}/rollout"), metadata=self.c.md
        )
        return reply.rollout  # type: ignore[no-any-return]

    async def push(self, name: str, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> str:
        """`liveml data push` of a CSV file, as a user would."""
        path = data.write_csv(self.workdir / name, x, y)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli.main", "data", "push", str(path),
            "--model", MODEL, "--label", "y",
            env={**os.environ, "LIVEML_REGISTRY": self.c.registry,
                 "LIVEML_TOKEN": self.c.ingest_token},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            out, _ = await proc.communicate()
        finally:
            if proc.returncode is None:  # the demo gave up (its time ran out)
                proc.kill()
                await proc.wait()
        text = out.decode(errors="replace").strip()
        if proc.returncode != 0:
            raise DemoFailure(f"liveml data push {name} failed: {text[-500:]}")
        return text.splitlines()[-1]

    # --- the workflow ------------------------------------------------------------------

    async def _run(self) -> tuple[list[Run], list[rpb.VersionMetrics]]:
        self.c = c = await start(self.services)
        self.step(
            "processes", f"registry {c.registry} (SQLite), 2 workers, gateway {c.gateway}, trainer"
        )
        await c.stub.CreateModel(
            rpb.CreateModelRequest(
                model_id=MODEL,
                model=rpb.Model(description="demo classifier, 8 features", signature=signature()),
            ),
            metadata=c.md,
        )
        await c.training.SetTrainingPolicy(
            tpb.SetTrainingPolicyRequest(policy=policy()), metadata=c.md
        )
        self.step(
            "policy",
            f"logistic regression on the newest {WINDOW} examples ({HOLDOUT} held out); "
            f"retrain on {NEW_EXAMPLES} new "
            "examples or an accuracy alert; gate: accuracy ≥ 0.75, ≤ 0.05 worse than "
            "production; canary 10→50→100% every 4 s. From here on only data goes in.",
        )
        old, a, b = data.concepts()

        # 1. A batch upload and stream ingestion: the volume trigger trains v1.
        pushed = await self.push("history.csv", *old.rows(NEW_EXAMPLES - 300, self.rng))
        ingested = await data.ingest(c.gateway, old, 300, seed=1, metadata=c.ingest_md)
        first = await self.next_run("the first run", canary=False)
        if first.state != Run.STATE_SUCCEEDED or first.trigger != tpb.TRAINING_TRIGGER_DATA_VOLUME:
            raise DemoFailure(f"the first run: {describe(first)} {first.error}")
        self.step("data in", f"{pushed}; {ingested} examples through the gateway (concept A0)")
        await self._serving(first.version)
        self.step(f"v{first.version} trained", f"{describe(first)}; {first.canary_decision}")

        # 2. Live traffic with feedback, and a stream of examples through the gateway: the
        # next volume trigger, a canary, promotion.
        traffic = data.Traffic(c.gateway, a, phase="A", metadata=c.client_md)
        traffic.start()
        streaming = asyncio.create_task(self._stream_examples(a))
        try:
            await until(self._asked_for(self.seen + 1), WITHIN, "the volume trigger")
            streaming.cancel()  # the next examples come from live feedback alone
            better = await self.next_run("a run on live data and its canary", canary=True)
            if better.canary_phase != Phase.PHASE_PROMOTED:
                raise DemoFailure(f"{describe(better)}; canary: {better.canary_decision}")
            self.step(f"v{better.version} promoted", f"{describe(better)}; {_canary(better)}")

            # 3. The concept shifts: AccuracyDrop retrains, and the new model is promoted.
            traffic.concept, traffic.phase = b, "B"
            alert = await until(self._alert(better.version), WITHIN, "AccuracyDrop")
            self.step("concept shifted", f"alert {alert.alert}: {alert.summary}")
            shifted = await self.next_run("a retrain on the alert and its canary", canary=True)
            if not any(r.startswith("alert: AccuracyDrop") for r in shifted.reasons):
                raise DemoFailure(f"expected the alert's retrain, got {describe(shifted)}")
            if shifted.canary_phase != Phase.PHASE_PROMOTED:
                raise DemoFailure(f"{describe(shifted)}; canary: {shifted.canary_decision}")
            self.step(f"v{shifted.version} promoted", f"{describe(shifted)}; {_canary(shifted)}")
            serving = shifted.version

            # 4. Scrambled labels: the gate rejects the candidate; it never gets traffic.
            traffic.labels = False  # labels come late for a while: only files arrive
            await self.push("scrambled.csv", *b.rows(NEW_EXAMPLES, self.rng, shuffle=True))
            rejected = await self.next_run("a run on the scrambled file")
            failed = failed_checks(rejected)
            if rejected.state != Run.STATE_REJECTED or "floor:accuracy" not in {
                f.name for f in failed
            }:
                raise DemoFailure(f"expected a rejection on the floor: {describe(rejected)}")
            if rejected.version:
                raise DemoFailure(f"rejected run {rejected.number} registered v{rejected.version}")
            self.step(
                "bad data rejected",
                f"{describe(rejected)}; failed: "
                + "; ".join(f"{f.name}: {f.text}" for f in failed)
                + "; no version registered, no traffic",
            )

            # 5. A stale export of the old concept: good offline, worse online, rolled back.
            await self.push("stale-export.csv", *a.rows(NEW_EXAMPLES, self.rng))
            stale = await self.next_run("a run on the stale export")
            if stale.state != Run.STATE_SUCCEEDED:
                raise DemoFailure(f"the stale export's run: {describe(stale)} {stale.error}")
            await until(self._canary_of(stale.version), WITHIN, f"the canary of v{stale.version}")
            traffic.labels = True  # live labels again, for the canary to judge
            stale = await self.next_run_again(stale)
            if stale.canary_phase != Phase.PHASE_ROLLED_BACK:
                raise DemoFailure(f"{describe(stale)}; canary: {stale.canary_decision}")
            if "max_accuracy_drop" not in stale.canary_decision:
                raise DemoFailure(f"rolled back for another reason: {stale.canary_decision}")
            self.step(
                f"v{stale.version} rolled back",
                f"{describe(stale)} offline; canary: {stale.canary_decision}",
            )
            # Calls routed before the gateway saw the rollback may still come back from
            # v4: count from a moment later.
            await until(self._answered(traffic, traffic.total() + 100), WITHIN, "100 answers")
            after = dict(traffic.answers)
            await until(self._answered(traffic, traffic.total() + 200), WITHIN, "200 more answers")
        finally:
            streaming.cancel()
            await traffic.stop()
        return await self._finish(traffic, after, serving, stale.version)

    def _asked_for(self, number: int) -> Callable[[], Awaitable[bool]]:
        async def created() -> bool:
            return any(r.number >= number for r in await self.runs())

        return created

    async def _stream_examples(self, concept: data.Concept) -> None:
        """Labelled examples through the gateway, 200 every half second, until cancelled."""
        for seed in range(1000, 10**6):
            await data.ingest(self.c.gateway, concept, 200, seed=seed, metadata=self.c.ingest_md)
            await asyncio.sleep(0.5)

    async def next_run_again(self, run: Run) -> Run:
        """`run` once its canary ended."""

        async def ended() -> Run | None:
            reply = await self.c.training.GetTrainingRun(
                tpb.GetTrainingRunRequest(name=run.name), metadata=self.c.md
            )
            return reply.run if reply.run.canary_phase in DONE else None

        return await until(ended, WITHIN, f"the end of v{run.version}'s canary")

    async def _finish(
        self, traffic: data.Traffic, after: dict[str, int], serving: int, stale: int
    ) -> tuple[list[Run], list[rpb.VersionMetrics]]:
        late = {v: n - after.get(v, 0) for v, n in traffic.answers.items()}
        if late.get(str(stale)):
            raise DemoFailure(f"v{stale} still answered {late[str(stale)]} requests")
        if traffic.failures:
            raise DemoFailure(
                f"{len(traffic.failures)} client calls failed: {traffic.failures[:3]}"
            )
        shares = ", ".join(f"v{v} {n}" for v, n in sorted(traffic.answers.items()))
        self.step(
            "clients",
            f"{traffic.total()} requests answered ({shares}), {traffic.feedback_sent} labels "
            f"sent, 0 failed; after the rollback only v{serving}",
        )
        c = self.c
        verdict = await c.stub.VerifyAudit(rpb.VerifyAuditRequest(), metadata=c.md)
        if not verdict.ok:
            raise DemoFailure(f"audit trail broken: {verdict.problem}")
        alerts = await c.stub.ListAlerts(rpb.ListAlertsRequest(model=MODEL), metadata=c.md)
        kinds = sorted({a.alert for a in alerts.alerts})
        self.step(
            "audit", f"HMAC hash chain intact over {verdict.events_checked} events; alerts: {kinds}"
        )
        answered = traffic.total()

        async def reported() -> list[rpb.VersionMetrics] | None:
            # The gateway reports every half second: wait for its last report, so the
            # controller's counts add up to the clients' (they saw the same answers).
            reply = await c.stub.GetVersionMetrics(
                rpb.GetVersionMetricsRequest(parent=f"models/{MODEL}", window=seconds(600)),
                metadata=c.md,
            )
            counted = sum(m.requests for m in reply.metrics)
            return list(reply.metrics) if counted >= answered else None

        metrics = await until(reported, WITHIN, f"the gateway's reports of {answered} answers")
        runs = await self.runs()
        await c.channel.close()
        self.tallies = traffic.tallies
        return runs, metrics

    async def _serving(self, version: int) -> None:
        async def served() -> bool:
            rollout = await self.rollout()
            if [(t.version, t.percent) for t in rollout.targets] != [(version, 100)]:
                return False
            reply = await self.c.stub.ListWorkers(rpb.ListWorkersRequest(), metadata=self.c.md)
            ready = sum(
                1
                for w in reply.workers
                for v in w.versions
                if (v.model, v.version, v.state) == (MODEL, version, rpb.VERSION_LOAD_STATE_READY)
            )
            return ready == 2

        await until(served, WITHIN, f"v{version} serving on both workers")

    def _alert(self, version: int) -> Callable[[], Awaitable[rpb.Alert | None]]:
        async def firing() -> rpb.Alert | None:
            reply = await self.c.stub.ListAlerts(
                rpb.ListAlertsRequest(model=MODEL, firing_only=True), metadata=self.c.md
            )
            found = [a for a in reply.alerts if a.alert == "AccuracyDrop" and a.version == version]
            return found[0] if found else None

        return firing

    def _canary_of(self, version: int) -> Callable[[], Awaitable[bool]]:
        async def started() -> bool:
            rollout = await self.rollout()
            return rollout.status.candidate_version == version and any(
                t.version == version and t.percent > 0 for t in rollout.targets
            )

        return started

    @staticmethod
    def _answered(traffic: data.Traffic, count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return traffic.total() >= count

        return check


def _canary(run: Run) -> str:
    """`canary passed 50%: …`: its decision without the `promoted vN` the step's title says."""
    return "canary " + run.canary_decision.removeprefix(f"promoted v{run.version}: ")


def main(keep: Path | None = None) -> int:
    workdir = keep or Path(tempfile.mkdtemp(prefix="liveml-demo-"))
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        console.print(f"[bold red]✗ demo failed:[/] cannot use {workdir} as its folder: {exc}")
        return 1
    console.rule("[bold]liveml demo: data in, models retrained, gated, canaried, rolled back")
    demo = Demo(workdir)
    try:
        runs, metrics = asyncio.run(demo.run())
    except (DemoFailure, aio.AioRpcError) as exc:
        console.print(f"[bold red]✗ demo failed:[/] {exc}")
        console.print(f"  logs of every process: {workdir}/*.log")
        if keep is None:
            console.print("  (run `liveml demo --keep DIR` to keep them)")
        return 1
    else:
        summary(demo.steps, runs, metrics, demo.tallies)
        console.print("[bold green]demo passed[/]")
        return 0
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
