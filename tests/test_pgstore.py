"""The shared store on PostgreSQL (``AFS_STORE_URL``): the store's contract on both
backends, then processes standing in for hosts (``AFS_HOST``) on one database and one
loopback webhook: exactly once, a killed host's leases, a database restart, ranks of
one failure on many hosts, and a rate shared by two jobs.

Needs PostgreSQL's server and psycopg (``tox run -e postgres``); skipped without them,
except under ``AFS_CI=1``.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from afs_core import NotificationManager
from afs_core.delivery.pgstore import MIGRATIONS, SCHEMA_VERSION
from afs_core.delivery.store import PRUNED_KEY, Store, StoreUnavailable, open_store
from afs_core.errors import ConfigurationError
from afs_core.results import DeliveryStatus
from afs_core.testing import WebhookServer, make_event

NODE = Path(__file__).with_name("pg_node.py")
DELIVERED = DeliveryStatus.DELIVERED


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["mysql://me@db/afs", "postgresql://me@db:port/afs", "postgres://h/a/b"])
def test_a_wrong_store_url_is_a_configuration_error_at_start(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("AFS_STORE_URL", url)
    with pytest.raises(ConfigurationError, match="AFS_STORE_URL"):
        NotificationManager.from_env()


def test_a_store_url_without_psycopg_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as where the [postgres] extra is not installed
    monkeypatch.setenv("AFS_STORE_URL", "postgresql://afs@db.example.org/afs")
    with pytest.raises(ConfigurationError, match=r"afs-core\[postgres\]"):
        NotificationManager.from_env()


def test_the_password_of_a_store_url_is_never_shown() -> None:
    from afs_core.delivery.pgstore import redact_url

    assert redact_url("postgresql://me:s3cret@db:5432/afs") == "postgresql://me:***@db:5432/afs"
    with pytest.raises(ValueError) as caught:
        from afs_core.delivery.pgstore import check_url

        check_url("postgresql://me:s3cret@db:x/afs")
    assert "s3cret" not in str(caught.value)


def test_without_a_store_url_the_store_is_sqlite_under_afs_home(afs_isolated_env: Path) -> None:
    store = open_store()
    assert isinstance(store, Store) and store.backend == "sqlite"


def test_both_backends_offer_every_public_method_the_engine_cli_and_dashboard_call() -> None:
    import inspect

    from afs_core.delivery.pgstore import PostgresStore

    def methods(cls: type) -> dict[str, inspect.Signature]:
        return {name: inspect.signature(member) for name, member in vars(cls).items()
                if callable(member) and not name.startswith("_")}

    sqlite, shared = methods(Store), methods(PostgresStore)
    assert sqlite.keys() <= shared.keys(), sorted(sqlite.keys() - shared.keys())
    for name, signature in sqlite.items():
        assert list(signature.parameters) == list(shared[name].parameters), name
    assert {"durable", "journal_directory", "backend", "quick_writes"} <= set(dir(PostgresStore)) | {"journal_directory"}


def test_afs_store_info_names_the_backend(afs_isolated_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from afs_core.cli import main

    assert main(["store", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "sqlite" and info["counts"]["events"] == 0
    assert main(["store", "migrate"]) == 0


# -- the store's contract, on both backends ---------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sqlite":
        yield Store(tmp_path / "afs.db")
        return
    url = request.getfixturevalue("pg_url")
    shared = open_store({"AFS_STORE_URL": url, "AFS_HOME": str(tmp_path / "home")})
    yield shared
    shared.close()


def test_a_claim_takes_the_oldest_events_first_whatever_order_they_were_stored_in(store: Any) -> None:
    now = time.time()

    def record(title: str, at: float) -> dict[str, Any]:
        return {"event": make_event(title=title).to_dict(), "channels": ["hook"], "at": at}

    store.ingest([record("newer", now - 10), record("newest", now - 5)])
    store.ingest([record("oldest", now - 60), record("older", now - 30)])  # a stopped process's, taken later
    claimed = store.claim("hook", "me:1:1", limit=10, lease=30.0)
    assert [c.event.title for c in claimed] == ["oldest", "older", "newer", "newest"]


def test_a_delivery_is_claimed_by_one_owner_and_finished_once(store: Any) -> None:
    event = make_event()
    store.enqueue(event, ["hook", "other"])
    first = store.claim("hook", "host-a:1:1", limit=10, lease=30.0)
    assert [c.event.event_id for c in first] == [event.event_id]
    assert store.claim("hook", "host-b:2:2", limit=10, lease=30.0) == []  # leased
    assert store.extend([first[0].delivery_id], "host-a:1:1", 30.0) == {first[0].delivery_id}
    assert store.finish_many([(first[0].delivery_id, DELIVERED, None, None)], "host-b:2:2") == [False]
    assert store.finish_many([(first[0].delivery_id, DELIVERED, None, None)], "host-a:1:1") == [True]
    assert store.claim("hook", "host-b:2:2", limit=10, lease=30.0) == []
    assert store.counts()["other"].pending == 1 and "hook" not in store.counts()
    entry = store.history(limit=5)[0]
    assert {(d.channel, d.status) for d in entry.deliveries} == {("hook", DELIVERED), ("other", DeliveryStatus.PENDING)}


def test_an_expired_lease_is_taken_over(store: Any) -> None:
    store.enqueue(make_event(), ["hook"])
    assert len(store.claim("hook", "far-host:1:1", limit=5, lease=0.2)) == 1
    time.sleep(0.4)
    assert len(store.claim("hook", "near-host:2:2", limit=5, lease=30.0)) == 1


def test_journal_records_go_in_once_and_ranks_join(store: Any) -> None:
    records = []
    for rank, host in ((0, "node-0"), (1, "node-1"), (9, "node-1")):
        event = make_event(title="Training failed", run_id="r")
        data = {**event.to_dict(), "source": {"host": host, "pid": 1, "rank": rank, "world_size": 16}}
        records.append({"event": data, "channels": ["hook"], "at": time.time(),
                        "merge": {"key": "r|failed|NCCL", "since": time.time() - 30, "rank": rank}})
    joined: dict[str, str] = {}
    assert store.ingest(records, joined=joined) == {"hook"}
    store.ingest(records)  # read twice: kept once
    assert len(joined) == 2 and store.pending(["hook"]).total == 1
    store.make_due(["hook"])
    (claimed,) = store.claim("hook", "me:1:1", limit=5, lease=30.0)
    assert claimed.event.context["ranks"] == "0, 1, 9"


def test_dead_deliveries_requeue_and_old_history_goes(store: Any) -> None:
    store.enqueue(make_event(), ["hook"])
    (claimed,) = store.claim("hook", "me:1:1", limit=5, lease=30.0)
    store.finish_many([(claimed.delivery_id, DeliveryStatus.FAILED, "410 gone", None)], "me:1:1")
    (dead,) = store.outbox()
    assert dead.status is DeliveryStatus.FAILED and dead.last_error == "410 gone"
    assert store.channel_failures()[0].error == "410 gone"
    assert store.requeue(dead.delivery_id) and not store.requeue(dead.delivery_id)
    assert store.pending(["hook"]).total == 1
    store.set_state("cost:r", "5.0")
    assert store.get_state("cost:r") == "5.0"
    store.forget_state("cost:r")
    assert store.get_state("cost:r") is None
    (again,) = store.claim("hook", "me:1:1", limit=5, lease=30.0)
    store.finish_many([(again.delivery_id, DELIVERED, None, None)], "me:1:1")
    assert store.prune(max_age=-1) == 1 and store.history() == []


def test_a_look_for_due_deliveries_goes_by_the_clock_claims_go_by(store: Any) -> None:
    """A worker's look reads has_due() before it claims: it must agree with the claim,
    on PostgreSQL by the server's clock even where this host's estimate of it is off."""
    store.enqueue(make_event(), ["hook"])
    assert store.has_due("hook") and not store.has_due("other")
    (item,) = store.claim("hook", "me:1:1", limit=5, lease=30.0)
    store.finish_many([(item.delivery_id, DeliveryStatus.PENDING, "503", store.clock.time() + 60)], "me:1:1")
    assert not store.has_due("hook") and store.claim("hook", "me:1:1", limit=5, lease=30.0) == []
    store.enqueue(make_event(), ["hook"])
    if hasattr(store.clock, "offset"):  # the server's clock, estimated when this host connected
        store.clock.offset -= 120.0  # ... and this host's clock stepped back since
    assert store.has_due("hook") and len(store.claim("hook", "me:1:1", limit=5, lease=30.0)) == 1


def test_a_store_pruned_within_the_interval_is_left_alone_by_the_next_engine(store: Any) -> None:
    """Every engine prunes as it starts, and runs start often: where any process pruned
    the store less than ``every`` seconds ago, with limits at least as strict, a prune
    only reads when and how that was."""
    def delivered(count: int) -> None:
        for _ in range(count):
            store.enqueue(make_event(), ["hook"])
            (item,) = store.claim("hook", "me:1:1", limit=5, lease=30.0)
            store.finish_many([(item.delivery_id, DELIVERED, None, None)], "me:1:1")

    delivered(3)
    assert store.prune(max_events=2, every=3600) == 1  # never pruned before: pruned now
    delivered(2)
    assert store.prune(max_events=3, every=3600) == 0  # pruned a moment ago, as strictly: left as it is
    assert len(store.history(limit=10)) == 4
    assert store.prune(max_events=3, every=3600) == 0
    assert store.prune(max_events=1, every=3600) == 3  # stricter than that prune: pruned
    delivered(2)
    record = json.loads(store.get_state(PRUNED_KEY))
    store.set_state(PRUNED_KEY, json.dumps({**record, "at": record["at"] - 3601}))  # as if an hour old
    assert store.prune(max_events=1, every=3600) == 2
    assert store.prune(max_events=0) == 1  # without ``every`` (afs store prune): always


def test_runs_and_a_runs_events_read_the_same_on_both(store: Any) -> None:
    store.enqueue(make_event(run_id="r1"), ["hook"])
    (run,) = store.runs()
    assert run.run_id == "r1" and run.state_event == "training_completed" and run.events == 1
    (event,) = store.run_events("r1")
    assert event.deliveries[0].channel == "hook"
    assert store.last_change()[0] >= 1


def test_a_diverged_run_is_stored_and_read_back_on_both(store: Any) -> None:
    store.enqueue(make_event("training_failed", "Training failed", run_id="nan-run", metrics={"loss": float("nan")},
                             cost=3.5), ["hook"])
    (entry,) = store.history()
    assert entry.event["metrics"]["loss"] == "NaN"  # strict JSON: readable by any JSON reader
    (run,) = store.runs()
    assert run.state_event == "training_failed" and run.cost == 3.5
    assert store.run_costs("nan-run")[0][1] == 3.5


# -- on PostgreSQL only ---------------------------------------------------------------------------


def test_the_schema_is_versioned_and_migrated_by_hand(pg_url: str, tmp_path: Path) -> None:
    shared = open_store({"AFS_STORE_URL": pg_url, "AFS_HOME": str(tmp_path)})
    info = shared.info()  # type: ignore[attr-defined]
    assert info["backend"] == "postgresql" and info["schema_version"] == SCHEMA_VERSION
    assert shared.migrate() == []  # type: ignore[attr-defined]


def test_a_database_of_an_earlier_version_is_migrated_step_by_step(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as db:  # as the first release left it
        db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL)")
        db.execute(MIGRATIONS[0].encode())
        db.execute("INSERT INTO schema_version VALUES (1, 0)")
    shared = open_store({"AFS_STORE_URL": pg_url, "AFS_HOME": str(tmp_path)})
    assert shared.migrate() == list(range(2, SCHEMA_VERSION + 1))  # type: ignore[attr-defined]
    assert shared.throttle("slack", "epoch_completed", "r", 60.0) == (True, 0)  # type: ignore[attr-defined]


def test_deliveries_waiting_in_a_version_2_database_get_their_event_time(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    now = time.time()
    with psycopg.connect(pg_url, autocommit=True) as db:  # schema version 2, with deliveries waiting
        db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL)")
        for number, step in enumerate(MIGRATIONS[:2], start=1):
            db.execute(step.encode())
            db.execute("INSERT INTO schema_version VALUES (%s, 0)", (number,))
        for title, created in (("second", now - 50), ("first", now - 90), ("third", now - 10)):
            event = make_event(title=title)
            db.execute("INSERT INTO events (event_id, created, event_type, level, title, data)"
                       " VALUES (%s, %s, %s, %s, %s, %s)",
                       (event.event_id, created, event.event_type.value, event.level.value, title,
                        json.dumps(event.to_dict())))
            db.execute("INSERT INTO deliveries (event_id, channel, status, next_attempt, updated)"
                       " VALUES (%s, 'hook', 'pending', %s, %s)", (event.event_id, created, created))
    shared = open_store({"AFS_STORE_URL": pg_url, "AFS_HOME": str(tmp_path)})
    assert shared.migrate() == list(range(3, SCHEMA_VERSION + 1))  # type: ignore[attr-defined]
    with psycopg.connect(pg_url, autocommit=True) as db:  # a process of the older afs-core, still running
        event = make_event(title="fourth")
        db.execute("INSERT INTO events (event_id, created, event_type, level, title, data)"
                   " VALUES (%s, %s, %s, %s, %s, %s)", (event.event_id, now - 5, event.event_type.value,
                                                        event.level.value, "fourth", json.dumps(event.to_dict())))
        db.execute("INSERT INTO deliveries (event_id, channel, status, next_attempt, updated)"
                   " VALUES (%s, 'hook', 'pending', %s, %s)", (event.event_id, now - 5, now - 5))
    claimed = shared.claim("hook", "me:1:1", limit=3, lease=30.0)  # type: ignore[attr-defined]
    assert [c.event.title for c in claimed] == ["first", "second", "third"]
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT COUNT(*) FROM deliveries WHERE created IS NULL").fetchone() == (0,)


def test_afs_store_commands_on_a_shared_database(pg_url: str, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from afs_core.cli import main

    monkeypatch.setenv("AFS_STORE_URL", pg_url)
    assert main(["store", "migrate", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["applied"] == list(range(1, SCHEMA_VERSION + 1))
    assert main(["store", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "postgresql" and info["schema_version"] == SCHEMA_VERSION and info["url"] == pg_url
    assert main(["history"]) == 0 and main(["outbox"]) == 0 and main(["status"]) == 0
    assert "postgresql" in capsys.readouterr().out


def test_pacing_is_shared_on_the_servers_clock(pg_url: str, tmp_path: Path) -> None:
    one = open_store({"AFS_STORE_URL": pg_url, "AFS_HOME": str(tmp_path / "a")})
    two = open_store({"AFS_STORE_URL": pg_url, "AFS_HOME": str(tmp_path / "b")})
    waits = [store.reserve("slack:x", 1.0, 2) for store in (one, two, one, two)]
    assert waits[:2] == [0.0, 0.0] and 0.5 < waits[2] <= 1.0 and 1.5 < waits[3] <= 2.0


# -- processes standing in for hosts --------------------------------------------------------------


class Nodes:
    """Processes of tests/pg_node.py, one per host, all on one database and one webhook."""

    def __init__(self, url: str, hook: str, base: Path) -> None:
        self.url, self.hook, self.base = url, hook, base
        self.procs: list[subprocess.Popen[str]] = []
        self.go = base / "go"

    def start(self, host: str, **settings: str) -> subprocess.Popen[str]:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AFS_", "NODE_"))},
               "AFS_STORE_URL": self.url, "AFS_HOST": host, "AFS_HOME": str(self.base / host),
               "AFS_CONSOLE": "false", "NODE_URL": self.hook, "NODE_GO": str(self.go), **settings}
        proc = subprocess.Popen([sys.executable, str(NODE)], env=env, stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # bounded: the process exits on its own NODE_GO deadline
            assert '"ready"' in line, line
            assert time.monotonic() < deadline
        self.go.touch()

    def results(self, timeout: float = 90.0) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                stdout, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1.0))
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            out.extend(json.loads(line) for line in stdout.splitlines() if line.startswith('{"host"'))
        return out

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def nodes(pg_url: str, tmp_path: Path) -> Iterator[tuple[Nodes, WebhookServer]]:
    server = WebhookServer().start()
    group = Nodes(pg_url, server.url + "/hook", tmp_path)
    try:
        yield group, server
    finally:
        group.kill_all()
        server.stop()


def _ids(server: WebhookServer) -> collections.Counter[str]:
    return collections.Counter(r.json["event_id"] for r in list(server.received))


def _wait_for(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def test_eight_hosts_deliver_every_event_exactly_once(nodes: tuple[Nodes, WebhookServer]) -> None:
    group, server = nodes
    for number in range(8):
        group.start(f"node-{number}", NODE_EVENTS="500")
    group.ready()
    results = group.results()
    seen = _ids(server)
    assert len(results) == 8 and all(r["flushed"] for r in results)
    assert len(seen) == 4000 and max(seen.values()) == 1
    hosts = collections.Counter(r.json["host"] for r in server.received)
    assert set(hosts) == {f"node-{n}" for n in range(8)}


def test_a_killed_hosts_deliveries_go_out_once_after_its_lease(nodes: tuple[Nodes, WebhookServer],
                                                              pg_url: str, tmp_path: Path) -> None:
    import psycopg

    group, server = nodes
    open_store({"AFS_STORE_URL": pg_url, "AFS_HOME": str(tmp_path / "look")}).migrate()  # type: ignore[attr-defined]  # the tables, before looking
    dying = group.start("node-dead", NODE_EVENTS="20", NODE_MODE="hang", AFS_LEASE_SECONDS="3", NODE_FLUSH="600",
                        NODE_TIMEOUT="1")
    group.ready()
    with psycopg.connect(pg_url, autocommit=True) as db:
        def leases() -> dict[str, float]:
            return {str(event_id): float(until) for event_id, until in db.execute(
                "SELECT event_id, lease_until FROM deliveries WHERE lease_owner LIKE 'node-dead:%'").fetchall()}

        def stored() -> int:
            row = db.execute("SELECT COUNT(*) FROM deliveries").fetchone()
            return int(row[0]) if row else 0

        assert _wait_for(lambda: stored() == 20 and leases(), 30)
        dying.send_signal(signal.SIGKILL)
        dying.wait(timeout=10)
        held, killed_at, killed = leases(), time.time(), time.monotonic()
        taker = group.start("node-taker", NODE_EVENTS="0", AFS_LEASE_SECONDS="3", NODE_FLUSH="30",
                            NODE_TIMEOUT="1")
        assert _wait_for(lambda: len(_ids(server)) == 20, 30)
    taker.wait(timeout=30)
    assert max(_ids(server).values()) == 1
    arrived = {r.json["event_id"]: r.at - killed for r in server.received}
    for event_id, until in held.items():  # the dead host's: not before its lease ran out
        assert until - killed_at - 0.3 <= arrived[event_id] < until - killed_at + 5.0


def test_a_database_restart_mid_run_loses_nothing_and_sends_nothing_twice(
        nodes: tuple[Nodes, WebhookServer], postgres_server: Any) -> None:
    group, server = nodes
    for number in range(2):
        group.start(f"node-{number}", NODE_EVENTS="300", NODE_SPACING="0.01", AFS_LEASE_SECONDS="5")
    group.ready()
    assert _wait_for(lambda: len(server.received) >= 50, 30)
    postgres_server.stop("fast")
    down = len(server.received)
    time.sleep(1.5)
    postgres_server.start()
    results = group.results()
    seen = _ids(server)
    assert down < 600, "the run ended before the database went down"
    assert len(seen) == 600 and max(seen.values()) == 1
    assert all(r["flushed"] for r in results)
    # notify() never waited for the database (a connection attempt alone takes seconds to
    # give up); what it costs here is ten processes sharing two cores.
    assert max(r["p99"] for r in results) < 0.5


def test_sixty_four_ranks_on_eight_hosts_send_one_message(nodes: tuple[Nodes, WebhookServer]) -> None:
    group, server = nodes
    for number in range(8):
        group.start(f"node-{number}", NODE_MODE="ranks", NODE_EVENTS="8", NODE_RANKS="8",
                    NODE_FIRST_RANK=str(number * 8), NODE_FLUSH="30")
    group.ready()
    group.results()
    assert len(server.received) == 1
    context = server.received[0].json["context"]
    assert len(context["ranks"].split(", ")) == 64
    assert sorted(context["hosts"].split(", ")) == [f"node-{n}" for n in range(8)]
    assert context["reported_by"] == "64 ranks on 8 hosts"


def test_two_jobs_on_one_target_keep_its_rate_together(nodes: tuple[Nodes, WebhookServer]) -> None:
    group, server = nodes
    per_second, burst = 5.0, 2
    for job in ("job-a", "job-b"):
        group.start(job, NODE_EVENTS="8", NODE_RATE=f"{per_second},{burst}", NODE_FLUSH="30")
    group.ready()
    group.results()
    times = sorted(r.at for r in server.received)
    assert len(times) == 16
    for start in times:  # in any second: the rate plus one burst, at most
        assert sum(1 for t in times if start <= t < start + 1.0) <= per_second + burst
    assert times[-1] - times[0] >= (16 - burst) / per_second - 0.5


def test_an_unreachable_database_keeps_events_in_the_journal(postgres_server: Any, tmp_path: Path) -> None:
    """A server that does not answer is "busy": accepted events wait in the journal and
    flush says it could not finish, never raising."""
    url = f"postgresql://afs@127.0.0.1:{postgres_server.port + 1}/nowhere?connect_timeout=2"
    shared = open_store({"AFS_STORE_URL": url, "AFS_HOME": str(tmp_path)})
    with pytest.raises(StoreUnavailable):
        shared.counts()
    from afs_core.plugins import PluginHost
    from afs_core.testing import RecordingChannel

    manager = NotificationManager(plugins=PluginHost(load_entry_points=False, strict=True), store=shared)
    manager.register_channel("recording", RecordingChannel())
    started = time.perf_counter()
    manager.notify("kept", "in the journal")
    assert time.perf_counter() - started < 0.05
    assert manager.flush(1.0) is False
    manager.close(timeout=0.5)
    journal = list((tmp_path / "journal").glob("*.jsonl"))
    assert journal and "kept" in "".join(p.read_text() for p in journal)


def test_a_long_outage_costs_no_more_memory_than_one_read_of_the_journal(postgres_server: Any, tmp_path: Path) -> None:
    """While the database is away, what the engine read waits in memory and every later
    event stays in the journal on disk, however long the outage lasts."""
    url = f"postgresql://afs@127.0.0.1:{postgres_server.port + 1}/nowhere?connect_timeout=2"
    from afs_core.plugins import PluginHost
    from afs_core.testing import RecordingChannel

    manager = NotificationManager(plugins=PluginHost(load_entry_points=False, strict=True),
                                  store=open_store({"AFS_STORE_URL": url, "AFS_HOME": str(tmp_path)}))
    manager.register_channel("recording", RecordingChannel())
    engine = manager._get_engine()
    for wave in range(5):  # five waves, several of the ingest thread's tries apart
        for i in range(40):
            manager.notify("wave", f"{wave}/{i}")
        deadline = time.monotonic() + 10
        while not engine._waiting and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.6)
        assert 0 < len(engine._waiting) <= 40  # the first read waits; the rest is on disk
    manager.close(timeout=0.5)
    kept = "".join(p.read_text() for p in (tmp_path / "journal").glob("*.jsonl"))
    assert all(f"4/{i}" in kept for i in range(40))


def test_run_state_on_the_callers_thread_never_waits_on_a_database_that_failed(
        postgres_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    url = f"postgresql://afs@127.0.0.1:{postgres_server.port + 1}/nowhere"
    shared = open_store({"AFS_STORE_URL": url, "AFS_HOME": str(tmp_path)})
    tries: list[dict[str, Any]] = []
    connect = psycopg.connect

    def counted(*args: Any, **kwargs: Any) -> Any:
        tries.append(kwargs)
        return connect(*args, **kwargs)

    monkeypatch.setattr(psycopg, "connect", counted)
    with pytest.raises(StoreUnavailable):
        shared.set_state("cost:r", "1")
    assert tries[0]["connect_timeout"] == 2 and tries[0]["tcp_user_timeout"] == 30_000
    started = time.perf_counter()
    for _ in range(100):  # a monitor saving its state: each raises at once, no new connection
        with pytest.raises(StoreUnavailable):
            shared.get_state("cost:r")
    assert len(tries) == 1 and time.perf_counter() - started < 0.5


def test_a_process_holds_one_connection_whatever_its_threads(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    from afs_core.plugins import PluginHost
    from afs_core.testing import RecordingChannel

    shared = open_store({"AFS_STORE_URL": pg_url, "AFS_HOME": str(tmp_path)})
    manager = NotificationManager(plugins=PluginHost(load_entry_points=False, strict=True), store=shared)
    for name in ("one", "two", "three"):  # a worker thread each, besides the ingest thread
        manager.register_channel(name, RecordingChannel())
    for number in range(20):
        manager.notify(f"event {number}", "m")
    assert manager.flush(30)
    with psycopg.connect(pg_url, autocommit=True) as db:
        row = db.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = 'afs'"
                         " AND datname = current_database()").fetchone()
    manager.close(timeout=5)
    assert row is not None and row[0] == 1


def test_a_journal_a_killed_process_left_goes_into_the_shared_store_once(pg_url: str, tmp_path: Path) -> None:
    """The next process on the same host takes it in, from the mark this host's journal
    files have in the database (named per host: pids repeat across machines)."""
    from afs_core.plugins import PluginHost
    from afs_core.source import host_name
    from afs_core.testing import RecordingChannel

    journal = tmp_path / "journal"
    journal.mkdir()
    events = [make_event(title=f"left {n}", run_id=f"left-{n}") for n in range(3)]
    (journal / f"{host_name()}-999999-1.jsonl").write_text(
        "".join(json.dumps({"event": e.to_dict(), "channels": ["rec"], "at": time.time()}) + "\n" for e in events))
    delivered: list[str] = []
    for _ in range(2):  # a second process finds nothing more to take
        shared = open_store({"AFS_STORE_URL": pg_url, "AFS_HOME": str(tmp_path)})
        manager = NotificationManager(plugins=PluginHost(load_entry_points=False, strict=True), store=shared)
        channel = RecordingChannel()
        manager.register_channel("rec", channel)
        assert manager.flush(30)
        manager.close(timeout=5)
        delivered += [str(message) for message in channel.messages]
    assert len(delivered) == 3 and all(any(f"left {n}" in m for m in delivered) for n in range(3))
    assert not list(journal.glob("*999999*"))


def test_a_runs_repeats_are_held_back_across_hosts_and_told_once(pg_url: str, tmp_path: Path) -> None:
    """Two processes deliver one run's epochs to one channel: one goes out per window,
    whichever process claims it, and the next one (or a closing digest) tells of the rest."""
    from afs_core.delivery.policy import Throttle
    from afs_core.events import EventType

    stores = [open_store({"AFS_STORE_URL": pg_url, "AFS_HOME": str(tmp_path / name)}) for name in ("a", "b")]
    throttles = [Throttle(60.0, {EventType.EPOCH_COMPLETED}) for _ in stores]
    epochs = [make_event(EventType.EPOCH_COMPLETED, f"epoch {n}", run_id="r") for n in range(6)]
    sent = [throttles[n % 2].check(event, store=stores[n % 2], channel="slack") for n, event in enumerate(epochs)]
    assert [send for send, _ in sent] == [True, False, False, False, False, False]
    assert throttles[0].pending_digests(stores[0], "slack") == [(EventType.EPOCH_COMPLETED, "r", 5)]
    assert throttles[1].pending_digests(stores[1], "slack") == []  # told once, by whichever closed first


# -- found by trying to break it -----------------------------------------------------------


def _manager_on(url: str, home: Path) -> tuple[NotificationManager, Any]:
    from afs_core.plugins import PluginHost
    from afs_core.testing import RecordingChannel

    channel = RecordingChannel()
    manager = NotificationManager(plugins=PluginHost(load_entry_points=False, strict=True),
                                  store=open_store({"AFS_STORE_URL": url, "AFS_HOME": str(home)}))
    manager.register_channel("recording", channel)
    return manager, channel


def test_a_nul_character_in_a_title_or_a_metric_name_is_stored_not_refused(pg_url: str, tmp_path: Path) -> None:
    manager, channel = _manager_on(pg_url, tmp_path)
    manager.log_metrics(step=1, run_id="r-nul", **{"lo\x00ss": 1.0})
    for title in ("before", "bad\x00title", "after"):
        manager.notify(title, "x", run_id="r-nul")
    assert manager.flush(30)
    manager.close(timeout=5)
    assert len(channel.messages) == 3
    store = open_store({"AFS_STORE_URL": pg_url, "AFS_HOME": str(tmp_path)})
    assert sorted(e.title for e in store.history(run_id="r-nul")) == ["after", "bad\ufffdtitle", "before"]
    assert list(store.metric_series("r-nul")) == ["lo\ufffdss"]


def test_a_read_only_database_keeps_events_in_the_journal_and_they_go_out_once(
        pg_url: str, postgres_server: Any, tmp_path: Path) -> None:
    """A standby during a failover refuses writes: sending from memory then would send
    them again once the journal goes in. They wait, and go out once."""
    import psycopg

    database = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    first, first_channel = _manager_on(pg_url, tmp_path)
    for title in "abc":
        first.notify(title, "x", run_id="r-ro")
    assert first.flush(2) is False
    first.close(timeout=1)
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = off')
    second, second_channel = _manager_on(pg_url, tmp_path)
    assert second.flush(30)
    second.close(timeout=5)
    assert first_channel.messages == [] and len(second_channel.messages) == 3


SKEWED_PRUNE = """
import sys, time
real = time.time
time.time = lambda: real() + 40 * 86400  # this host's clock: 40 days ahead
from afs_core.delivery.store import open_store
store = open_store({"AFS_STORE_URL": sys.argv[1], "AFS_HOME": sys.argv[2]})
print(store.prune(max_age=30 * 86400))
"""


def test_a_host_whose_clock_is_ahead_prunes_no_one_elses_history(pg_url: str, tmp_path: Path) -> None:
    manager, _ = _manager_on(pg_url, tmp_path / "good")
    for i in range(5):
        manager.notify(f"kept {i}", "x", run_id="r-kept")
    assert manager.flush(30)
    manager.close(timeout=5)
    done = subprocess.run([sys.executable, "-c", SKEWED_PRUNE, pg_url, str(tmp_path / "skewed")],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "0", done.stderr
    store = open_store({"AFS_STORE_URL": pg_url, "AFS_HOME": str(tmp_path)})
    assert len(store.history(run_id="r-kept")) == 5


def test_training_code_waits_on_a_locked_table_no_longer_than_its_patience(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    store = open_store({"AFS_STORE_URL": pg_url, "AFS_HOME": str(tmp_path)})
    store.set_state("cost:r", "1")  # connected, schema in place
    with psycopg.connect(pg_url) as other:
        other.execute("LOCK TABLE run_state IN ACCESS EXCLUSIVE MODE")  # held until this block ends
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.get_state("cost:r")
        assert time.monotonic() - started < 5  # its patience is half a second; the lock lasts the block
        other.rollback()


def test_a_password_given_as_a_query_parameter_is_never_shown() -> None:
    from afs_core.delivery.pgstore import redact_url

    shown = redact_url("postgresql://sec@db.example:5432/team?sslmode=require&password=S3cr3tPW")
    assert "S3cr3tPW" not in shown and "password=***" in shown and "sslmode=require" in shown
    assert "S3cr3tPW" not in redact_url("postgresql://sec:S3cr3tPW@[::1/team")


SKEWED_SEND = """
import sys, time
real = time.time
time.time = lambda: real() + float(sys.argv[3])  # this host's clock, off by that much
from afs_core import NotificationManager
from afs_core.delivery.store import open_store
from afs_core.plugins import PluginHost
from afs_core.testing import RecordingChannel
channel = RecordingChannel()
manager = NotificationManager(plugins=PluginHost(load_entry_points=False, strict=True),
                              store=open_store({"AFS_STORE_URL": sys.argv[1], "AFS_HOME": sys.argv[2]}))
manager.register_channel("recording", channel)
for i in range(3):
    manager.notify(f"skewed {i}", "x", run_id="r-skew")
print(manager.flush(10), len(channel.messages))
manager.close(timeout=1)
"""


@pytest.mark.parametrize("skew", [120.0, -600.0])
def test_a_host_whose_clock_is_off_sends_at_once_on_the_servers_time(pg_url: str, tmp_path: Path,
                                                                      skew: float) -> None:
    done = subprocess.run([sys.executable, "-c", SKEWED_SEND, pg_url, str(tmp_path), str(skew)],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "3"], done.stderr
    import psycopg

    with psycopg.connect(pg_url) as db:  # stored in the server's time, not the host's
        (created,) = db.execute("SELECT max(created) - extract(epoch from clock_timestamp()) FROM events").fetchone()
    assert abs(created) < 30
