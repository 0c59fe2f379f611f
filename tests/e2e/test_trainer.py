"""The trainer as a process against a registry process: runs from policy to version (or
to a rejection naming its check), entry points, bad data, triggers, replicas, and a
trainer killed mid-run."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from grpc import aio

from services.common.gen.liveml.registry.v1 import registry_pb2 as rpb
from services.common.gen.liveml.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.common.gen.liveml.training.v1 import training_pb2 as tpb
from services.common.gen.liveml.training.v1 import training_pb2_grpc as tpb_grpc
from tests.helpers import training
from tests.helpers.cluster import Cluster, cluster
from tests.helpers.wait import async_wait_until
from tests.integration.test_cli import liveml

pytestmark = pytest.mark.timeout(300)

Run = tpb.TrainingRun
FINAL = (Run.STATE_SUCCEEDED, Run.STATE_REJECTED, Run.STATE_FAILED)
FAST = {"LIVEML_CONTROLLER_SECONDS": "0.2", "LIVEML_MONITOR_SECONDS": "0.3"}


class Training:
    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.stub = tpb_grpc.TrainingServiceStub(c.channel)

    async def set(self, policy: tpb.TrainingPolicy) -> tpb.TrainingPolicy:
        reply = await self.stub.SetTrainingPolicy(
            tpb.SetTrainingPolicyRequest(policy=policy), metadata=self.c.md
        )
        return reply.policy  # type: ignore[no-any-return]

    async def run(self, model: str = "clf", reason: str = "test") -> Run:
        reply = await self.stub.RequestTrainingRun(
            tpb.RequestTrainingRunRequest(
                parent=f"models/{model}", trigger=tpb.TRAINING_TRIGGER_MANUAL, reason=reason
            ),
            metadata=self.c.md,
        )
        return reply.run  # type: ignore[no-any-return]

    async def runs(self, model: str = "clf") -> list[Run]:
        reply = await self.stub.ListTrainingRuns(
            tpb.ListTrainingRunsRequest(parent=f"models/{model}"), metadata=self.c.md
        )
        return list(reply.runs)

    async def get(self, number: int, model: str = "clf") -> Run:
        reply = await self.stub.GetTrainingRun(
            tpb.GetTrainingRunRequest(name=f"models/{model}/trainingRuns/{number}"),
            metadata=self.c.md,
        )
        return reply.run  # type: ignore[no-any-return]

    async def done(self, number: int, within: float = 90) -> Run:
        async def final() -> Run | None:
            run = await self.get(number)
            return run if run.state in FINAL else None

        return await async_wait_until(final, within, f"run {number} to end")

    async def through(self, policy: tpb.TrainingPolicy) -> Run:
        """Set the policy, ask for a run, wait for its end."""
        await self.set(policy)
        return await self.done((await self.run()).number)


async def rollout(c: Cluster, model: str = "clf") -> rpb.Rollout:
    reply = await c.stub.GetRollout(
        rpb.GetRolloutRequest(name=f"models/{model}/rollout"), metadata=c.md
    )
    return reply.rollout  # type: ignore[no-any-return]


async def latest_version(c: Cluster, model: str = "clf") -> int:
    reply = await c.stub.GetModel(rpb.GetModelRequest(name=f"models/{model}"), metadata=c.md)
    return int(reply.model.latest_version)


def checks(run: Run) -> dict[str, tpb.GateCheck]:
    return {c.name: c for c in run.checks if not c.slice}


async def setup(c: Cluster, root: Path) -> tuple[Training, Path]:
    await c.create_model("clf")
    data = training.write_csv(root / "data.csv", 2000)
    await c.start_trainer("t1")
    return Training(c), data


async def test_a_run_registers_canaries_and_a_worse_one_is_rejected(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        t, data = await setup(c, tmp_path)
        weak = training.policy(
            "clf", data, "sklearn.tree.DecisionTreeClassifier", params={"max_depth": 1}
        )
        first = await t.through(weak)
        assert first.state == Run.STATE_SUCCEEDED, first.error or list(first.checks)
        assert first.version == 1 and first.production_version == 0
        assert (first.train_rows, first.holdout_rows, first.dataset.rows) == (1600, 400, 2000)
        assert len(first.dataset.digest) == 64 and first.dataset.uri == data.as_uri()
        by = checks(first)
        assert set(by) == {
            "min_holdout_rows",
            "floor:accuracy",
            "regression:accuracy",
            "non_inferiority:accuracy",
            "parity",
            "latency",
        }
        assert all(check.passed for check in first.checks)
        assert "no production version" in by["regression:accuracy"].text
        assert first.canary_decision == "no version served: v1 takes all the traffic"
        assert [(t.version, t.percent) for t in (await rollout(c)).targets] == [(1, 100)]
        v1 = (
            await c.stub.GetVersion(
                rpb.GetVersionRequest(name="models/clf/versions/1"), metadata=c.md
            )
        ).version
        assert (
            v1.lineage.pipeline_run == first.name
            and v1.approval.state == rpb.APPROVAL_STATE_APPROVED
        )
        assert v1.metrics["holdout_accuracy"] == pytest.approx(first.candidate_metrics["accuracy"])
        assert v1.dataset.digest == first.dataset.digest and v1.reference_statistics.inputs

        better = await t.through(training.policy("clf", data))
        assert better.state == Run.STATE_SUCCEEDED, better.error or list(better.checks)
        assert better.version == 2 and better.production_version == 1
        inferiority = checks(better)["non_inferiority:accuracy"]
        assert inferiority.passed and inferiority.HasField("production")
        assert better.candidate_metrics["accuracy"] > better.production_metrics["accuracy"]
        canary = await rollout(c)
        assert [(t.version, t.percent) for t in canary.targets] == [(1, 90), (2, 10)]
        assert canary.status.phase == rpb.AnalysisStatus.PHASE_PROGRESSING
        assert better.canary_decision == "canary started: v2 at 10% against v1"
        assert better.canary_phase == rpb.AnalysisStatus.PHASE_PROGRESSING

        await c.route("clf", (2, 100))  # an operator promotes it by hand
        worse = await t.through(
            training.policy("clf", data, params={"C": 1e-8}),
        )
        assert worse.state == Run.STATE_REJECTED and not worse.version
        failed = {name for name, check in checks(worse).items() if not check.passed}
        assert failed == {"regression:accuracy", "non_inferiority:accuracy"}, failed
        assert "worse by" in checks(worse)["regression:accuracy"].text
        assert await latest_version(c) == 2
        alerts = await c.stub.ListAlerts(rpb.ListAlertsRequest(model="clf"), metadata=c.md)
        (rejected,) = [a for a in alerts.alerts if a.alert == "TrainingRejected"]
        assert "regression:accuracy: accuracy 0." in rejected.summary

        env = {"LIVEML_REGISTRY": f"127.0.0.1:{c.registry_port}", "LIVEML_TOKEN": c.admin}
        shown = await asyncio.to_thread(
            liveml, {**env, "COLUMNS": "300"}, "train", "show", "clf", str(worse.number)
        )
        assert "rejected" in shown.stdout and "regression:accuracy" in shown.stdout
        assert "FAIL" in shown.stdout
        listed = await asyncio.to_thread(liveml, env, "train", "runs", "clf", "--json")
        assert [r["state"] for r in json.loads(listed.stdout)] == [
            "REJECTED",
            "SUCCEEDED",
            "SUCCEEDED",
        ]


async def test_parity_and_latency_regressions_are_caught(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        t, data = await setup(c, tmp_path)
        assert (await t.through(training.policy("clf", data))).state == Run.STATE_SUCCEEDED
        strict = training.policy("clf", data)
        strict.gate.parity_tolerance = 1e-12  # float32 ONNX against float64 scikit-learn
        drifted = await t.through(strict)
        assert drifted.state == Run.STATE_REJECTED
        parity = checks(drifted)["parity"]
        assert not parity.passed and parity.candidate > 1e-12
        assert "largest probability difference" in parity.text
        # As accurate, several times slower per call: a wide network where a linear model did.
        wide = training.policy(
            "clf",
            data,
            "sklearn.neural_network.MLPClassifier",
            params={"hidden_layer_sizes": [512, 512], "max_iter": 20, "random_state": 0},
        )
        wide.gate.non_inferiority_margin = 0.03
        slow = await t.through(wide)
        assert slow.state == Run.STATE_REJECTED
        failed = [name for name, check in checks(slow).items() if not check.passed]
        assert failed == ["latency"], [checks(slow)[n].text for n in failed]
        assert checks(slow)["latency"].candidate > 1.5
        assert await latest_version(c) == 1


async def test_entry_points_take_the_same_gate(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        t, data = await setup(c, tmp_path)
        made = await t.through(training.policy("clf", data, "tests.helpers.training:logistic"))
        assert made.state == Run.STATE_SUCCEEDED and made.version == 1
        onnx = await t.through(
            training.policy("clf", data, "tests.helpers.training:onnx_bytes", returns_onnx=True)
        )
        assert onnx.state == Run.STATE_SUCCEEDED and onnx.version == 2, onnx.error
        assert checks(onnx)["parity"].text.startswith("the entry point returned ONNX itself")
        assert checks(onnx)["non_inferiority:accuracy"].HasField("production")
        raised = await t.through(training.policy("clf", data, "tests.helpers.training:raises"))
        assert raised.state == Run.STATE_FAILED
        assert raised.error.startswith(
            "entry point tests.helpers.training:raises raised ValueError: the data team's bug (at "
        )
        assert "tests/helpers/training.py:" in raised.error
        missing = await t.through(training.policy("clf", data, "tests.helpers.nowhere:build"))
        assert missing.state == Run.STATE_FAILED
        assert missing.error.startswith(
            "entry point 'tests.helpers.nowhere:build' cannot be imported: No module named"
        )
        alerts = await c.stub.ListAlerts(rpb.ListAlertsRequest(model="clf"), metadata=c.md)
        assert len([a for a in alerts.alerts if a.alert == "TrainingFailed"]) == 2


async def test_bad_data_fails_the_run_and_says_why(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        t, data = await setup(c, tmp_path)
        cases: list[tuple[Path, dict[str, Any], str]] = []
        cases.append(
            (data, {"label": "outcome"}, f"{data.as_uri()}: no column 'outcome' in the header")
        )
        nan = tmp_path / "nan.csv"
        nan.write_text("f0,f1,f2,f3,y,t\n" + "nan,1,2,3,1,5\n,1,2,3,0,6\n")
        cases.append((nan, {}, "every one of its 2 rows has a NaN"))
        empty = tmp_path / "empty.csv"
        empty.write_text("f0,f1,f2,f3,y,t\n")
        cases.append((empty, {}, f"{empty.as_uri()}: no rows to train on"))
        ragged = tmp_path / "ragged.csv"
        ragged.write_text("f0,f1,f2,f3,y,t\n1,2,3,4,1,5\n1,2,3,1,6\n")
        cases.append((ragged, {}, f"{ragged.as_uri()} line 3: 5 values, the header has 6"))
        words = tmp_path / "words.csv"
        words.write_text("f0,f1,f2,f3,y,t\n1,2,3,4,1,5\n1,two,3,4,0,6\n")
        cases.append((words, {}, "row 2: column 'f1' holds 'two', not a number"))
        gone = tmp_path / "gone.csv"
        cases.append((gone, {}, f"dataset_uri {gone.as_uri()!r}: no such file"))
        for path, fields, expected in cases:
            run = await t.through(training.policy("clf", path, **fields))
            assert run.state == Run.STATE_FAILED, (path, run.state)
            assert expected in run.error, (expected, run.error)
        assert await latest_version(c) == 0


async def test_triggers_coalesce_and_two_trainers_make_one_run(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        t, data = await setup(c, tmp_path)
        await c.start_trainer("t2")
        # Every 2 s and on 500 new examples; none of it before the first run's cooldown ends.
        await t.set(
            training.policy(
                "clf",
                data,
                triggers=tpb.TrainingTriggers(interval=training.seconds(2), min_new_examples=500),
                cooldown=training.seconds(1),
            )
        )

        async def kinds() -> list[int]:
            return [r.trigger for r in await t.runs() if r.state in FINAL]

        # The volume trigger fires at once (2000 rows, none seen), the schedule after 2 s.
        await async_wait_until(
            lambda: _has(kinds, tpb.TRAINING_TRIGGER_SCHEDULE), 60, "a scheduled run"
        )
        runs = await t.runs()
        first = runs[-1]
        assert first.trigger == tpb.TRAINING_TRIGGER_DATA_VOLUME
        assert (
            first.reasons[0]
            == "data_volume: 2000 new labelled examples since the policy was set (at least 500)"
        )
        assert first.source_rows == 2000
        # Two trainers polling the same triggers: never two runs at once for the model, and
        # each run carried out by exactly one of them.
        # (a run the next trigger queued meanwhile is not claimed yet: no trainer.)
        claimed = {r.trainer for r in runs if r.state in FINAL}
        assert claimed <= {"trainers/t1", "trainers/t2"}, claimed
        starts = sorted(
            (r.start_time.ToMicroseconds(), r.end_time.ToMicroseconds())
            for r in runs
            if r.state in FINAL
        )
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(starts)), starts
        # New rows: the volume trigger again.
        await t.set(
            training.policy(
                "clf",
                data,
                triggers=tpb.TrainingTriggers(min_new_examples=500),
                cooldown=training.seconds(1),
            )
        )
        before = {r.name for r in await t.runs()}
        training.write_csv(data, 600, seed=5, start=2e9, append=True)

        async def volume_run() -> Run | None:
            found = [
                r
                for r in await t.runs()
                if r.name not in before and r.trigger == tpb.TRAINING_TRIGGER_DATA_VOLUME
            ]
            return found[0] if found else None

        grown = await async_wait_until(volume_run, 60, "a data-volume run after new rows")
        assert grown.reasons[0].startswith("data_volume: 600 new labelled examples since run ")
        assert (await t.done(grown.number)).state == Run.STATE_SUCCEEDED

        # A manual request while a run is queued joins it: one run, both reasons.
        await t.set(training.policy("clf", data, cooldown=training.seconds(1)))  # no triggers

        async def all_final() -> bool:
            return all(r.state in FINAL for r in await t.runs())

        await async_wait_until(all_final, 60, "every run to end")
        for trainer in c.trainers.values():
            trainer.popen.send_signal(signal.SIGSTOP)  # no claim while the requests arrive
        try:
            one = await t.run(reason="first")
            two = await t.stub.RequestTrainingRun(
                tpb.RequestTrainingRunRequest(
                    parent="models/clf", trigger=tpb.TRAINING_TRIGGER_MANUAL, reason="second"
                ),
                metadata=c.md,
            )
        finally:
            for trainer in c.trainers.values():
                trainer.popen.send_signal(signal.SIGCONT)
        assert not two.created and two.run.name == one.name
        assert list(two.run.reasons) == ["manual: first", "manual: second"]
        assert (await t.done(one.number)).state == Run.STATE_SUCCEEDED


async def _has(kinds: Any, trigger: int) -> bool:
    return trigger in await kinds()


async def test_a_trainer_killed_mid_run_costs_one_attempt_and_one_version(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.create_model("clf")
        data = training.write_csv(tmp_path / "data.csv", 1000)
        t = Training(c)
        await c.start_trainer("t1", "--lease-seconds", "2")
        hold = tmp_path / "hold"
        hold.touch()
        await t.set(
            training.policy(
                "clf",
                data,
                "tests.helpers.training:onnx_bytes",
                returns_onnx=True,
                params={"hold": str(hold)},
            )
        )
        run = await t.run()

        async def running() -> bool:
            return (await t.get(run.number)).state == Run.STATE_RUNNING

        await async_wait_until(running, 60, "the run to start")
        victim = c.trainers["t1"]
        victim.popen.kill()  # SIGKILL, mid-fit
        victim.popen.wait()
        failed = await t.done(run.number, within=30)
        assert failed.state == Run.STATE_FAILED
        assert failed.error == "trainer trainers/t1 stopped answering (its lease expired)"
        retry = (await t.runs())[0]
        assert retry.number == run.number + 1 and retry.attempt == 2
        assert retry.retry_of == run.name and retry.trigger == tpb.TRAINING_TRIGGER_RETRY
        hold.unlink()  # the next attempt's fit does not wait
        await c.start_trainer("t2")
        retried = await t.done(retry.number)
        assert retried.state == Run.STATE_SUCCEEDED and retried.trainer == "trainers/t2"
        versions = await c.stub.ListVersions(
            rpb.ListVersionsRequest(parent="models/clf"), metadata=c.md
        )
        assert [v.lineage.pipeline_run for v in versions.versions] == [retry.name]


async def test_an_accuracy_alert_on_the_serving_version_retrains(tmp_path: Path) -> None:
    """The serving version's live accuracy falls far below its holdout accuracy (windows
    reported as a gateway reports them): AccuracyDrop fires and the trainer retrains."""
    async with cluster(tmp_path, **FAST) as c:
        t, data = await setup(c, tmp_path)
        first = await t.through(training.policy("clf", data))
        assert first.state == Run.STATE_SUCCEEDED
        await t.set(
            training.policy(
                "clf",
                data,
                triggers=tpb.TrainingTriggers(on_alert=True),
                cooldown=training.seconds(1),
            )
        )
        async with aio.insecure_channel(f"127.0.0.1:{c.registry_port}") as channel:
            gateway = rpb_grpc.RegistryServiceStub(channel)
            window = rpb.Window(
                model="clf",
                version=1,
                source=rpb.WINDOW_SOURCE_GATEWAY,
                reporter="gateways/test",
                requests=200,
                feedback_correct=20,
                feedback_total=200,
            )
            now = time.time()
            window.start_time.FromNanoseconds(int((now - 1) * 1e9))
            window.end_time.FromNanoseconds(int(now * 1e9))
            await gateway.ReportWindows(
                rpb.ReportWindowsRequest(windows=[window]),
                metadata=(("authorization", f"Bearer {c.mint('test', rpb.ROLE_GATEWAY)}"),),
            )

        async def alert_run() -> Run | None:
            found = [r for r in await t.runs() if r.trigger == tpb.TRAINING_TRIGGER_ALERT]
            return found[0] if found else None

        retrain = await async_wait_until(alert_run, 60, "a run triggered by the alert")
        assert retrain.reasons[0].startswith("alert: AccuracyDrop: v1 of clf: live accuracy 0.100")
        assert (await t.done(retrain.number)).state in FINAL


async def test_a_parquet_source(tmp_path: Path) -> None:
    """A Parquet source reads with pyarrow when installed, else the run says what is missing."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        have = False
    else:
        have = True
    async with cluster(tmp_path) as c:
        t, _ = await setup(c, tmp_path)
        path = tmp_path / "data.parquet"
        if have:
            import pyarrow as pa
            import pyarrow.parquet as pq

            rng = np.random.default_rng(1)
            x = rng.normal(size=(800, 4))
            y = (x @ training.RULE > 0).astype(int)
            table = pa.table(
                {
                    **{f: x[:, i] for i, f in enumerate(training.FEATURES)},
                    "y": y,
                    "t": np.arange(800.0),
                }
            )
            pq.write_table(table, path)
        else:
            path.write_bytes(b"PAR1")
        run = await t.through(training.policy("clf", path))
        if have:
            assert run.state == Run.STATE_SUCCEEDED and run.dataset.rows == 800
        else:
            assert run.state == Run.STATE_FAILED
            assert run.error.endswith("reading Parquet needs pyarrow, which is not installed")


async def test_a_policy_learns_from_the_event_stream(tmp_path: Path) -> None:
    """No file: the model's labelled examples in the event stream, counted by the
    data-volume trigger, read with their sequences."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from services.common.gen.liveml.events.v1 import events_pb2 as epb
    from services.common.gen.liveml.gateway.v1 import gateway_pb2 as gpb

    async with cluster(tmp_path) as c:
        await c.create_model("clf")
        await c.start_trainer("t1")
        t = Training(c)
        ingest = await c.stub.CreateToken(
            rpb.CreateTokenRequest(display_name="ingest", role=rpb.ROLE_INGEST), metadata=c.md
        )

        async def append(rows: int, seed: int) -> None:
            rng = np.random.default_rng(seed)
            x = rng.normal(size=(rows, 4))
            y = (x @ training.RULE > 0).astype(int)
            events = []
            for i in range(rows):
                when = Timestamp()
                when.FromSeconds(1_700_000_000 + seed * 10_000 + i)
                events.append(
                    epb.Event(
                        kind=epb.EVENT_KIND_EXAMPLE,
                        model="clf",
                        key=f"s{seed}-{i}",
                        example=epb.Example(
                            features=x[i].tolist(),
                            label=gpb.Label(class_index=int(y[i])),
                            event_time=when,
                            origin=epb.EXAMPLE_ORIGIN_INGESTED,
                        ),
                    )
                )
            await c.stub.AppendEvents(
                rpb.AppendEventsRequest(events=events),
                metadata=(("authorization", f"Bearer {ingest.secret}"),),
            )

        await append(1000, seed=1)
        policy = training.policy(
            "clf",
            tmp_path / "unused.csv",
            triggers=tpb.TrainingTriggers(min_new_examples=500),
        )
        policy.dataset_uri = ""
        await t.set(policy)

        async def ended(count: int) -> list[Run] | None:
            runs = [r for r in await t.runs() if r.state in FINAL]
            return runs if len(runs) >= count else None

        (first,) = await async_wait_until(lambda: ended(1), 60, "the first run")
        assert first.state == Run.STATE_SUCCEEDED, first.error
        assert first.trigger == tpb.TRAINING_TRIGGER_DATA_VOLUME
        assert first.dataset.uri == "events:clf" and first.source_rows == 1000
        assert (first.first_sequence, first.last_sequence) == (1, 1000)
        assert (first.train_rows, first.holdout_rows) == (800, 200)
        await append(600, seed=2)
        runs = await async_wait_until(lambda: ended(2), 60, "a run on the new examples")
        assert runs[0].source_rows == 1600 and runs[0].last_sequence == 1600
        assert runs[0].reasons[0].startswith("data_volume: 600 new labelled examples since run 1")


async def test_the_trainer_exports_its_runs_as_metrics(tmp_path: Path) -> None:
    """What each run ended as, which check rejected one, stage times and the last poll."""
    import urllib.request

    from tests.conftest import free_port

    async with cluster(tmp_path) as c:
        await c.create_model("clf")
        data = training.write_csv(tmp_path / "data.csv", 1000)
        port = free_port()
        await c.start_trainer("t1", "--metrics-port", str(port))
        t = Training(c)
        assert (await t.through(training.policy("clf", data))).state == Run.STATE_SUCCEEDED
        strict = training.policy("clf", data)
        strict.gate.parity_tolerance = 1e-12
        assert (await t.through(strict)).state == Run.STATE_REJECTED

        def scrape() -> dict[str, float]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                body = r.read().decode()
            return {
                line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in body.splitlines()
                if line.startswith("liveml_trainer_")
            }

        got = await asyncio.to_thread(scrape)
        assert got['liveml_trainer_runs_total{model="clf",state="succeeded"}'] == 1
        assert got['liveml_trainer_runs_total{model="clf",state="rejected"}'] == 1
        assert got['liveml_trainer_gate_failures_total{check="parity",model="clf"}'] == 1
        assert got['liveml_trainer_stage_seconds_count{stage="fit"}'] == 2
        assert got["liveml_trainer_policies"] == 1
        assert time.time() - got["liveml_trainer_last_poll_timestamp_seconds"] < 60
