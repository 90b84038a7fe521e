"""The dashboard on a large history: how long the runs page and a run's page take.

Fills a store in a temporary directory with runs of events (each delivered to one
channel, with its try) and recorded metrics, then renders both pages through
Starlette's TestClient, as the server would, timing each. Needs afs-dashboard:

    .venv/bin/pip install -q . 'plugins/afs-dashboard[test]'
    .venv/bin/python benchmarks/dashboard.py --runs 100 --events 100000
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from afs_core.delivery.metrics import MetricRow
from afs_core.delivery.store import Store
from afs_core.testing import make_event

KINDS = ["batch_processed", "epoch_completed", "loss_improved", "checkpoint_saved", "cost_threshold_exceeded"]


def fill(store: Store, runs: int, events: int, steps: int) -> None:
    """``events`` events over ``runs`` runs (a start, steps, and most of them an end),
    ``steps`` loss and accuracy values per run."""
    per_run = events // runs
    start = time.time() - 86_400
    rng = random.Random(17)
    batch: list[dict[str, object]] = []
    metric_rows: list[MetricRow] = []

    def put(at: float, **fields: object) -> None:
        event = make_event(**fields).to_dict()
        batch.append({"event": event, "channels": ["hook"], "at": at})
        if len(batch) >= 5_000:
            store.ingest(batch, metric_rows=metric_rows)
            batch.clear()
            metric_rows.clear()

    for run in range(runs):
        run_id, began = f"run-{run:03d}", start + run * 600
        put(began, event_type="training_started", title=f"Training started: model-{run % 7}", run_id=run_id,
            model_name=f"model-{run % 7}")
        for index in range(1, per_run - 1):
            kind = KINDS[index % len(KINDS)]
            put(began + index, event_type=kind, title=f"{kind} {index}", message="x" * rng.randint(40, 400),
                run_id=run_id, model_name=f"model-{run % 7}", metrics={"loss": 1.0 / index},
                cost=index / 100 if kind == "cost_threshold_exceeded" else None)
        for step in range(steps):
            for name, value in (("loss", 2.0 / (step + 1)), ("accuracy", step / steps)):
                metric_rows.append(MetricRow(f"{run_id}-{step}-{name}", run_id, f"model-{run % 7}", name, step,
                                             value, began + step))
        if run % 10:
            put(began + per_run, event_type="training_completed" if run % 5 else "training_failed",
                title=f"Training ended: {run_id}", run_id=run_id, model_name=f"model-{run % 7}")
    store.ingest(batch, metric_rows=metric_rows)
    # Every delivery made: delivered at its first try (written directly, as the engine would have).
    assert store.path is not None
    with sqlite3.connect(store.path) as db:
        db.execute("INSERT INTO attempts (delivery_id, at, outcome) SELECT id, next_attempt + 1, 'delivered'"
                   " FROM deliveries")
        db.execute("UPDATE deliveries SET status = 'delivered', attempts = 1")


def timed(get: object, path: str, rounds: int) -> tuple[float, float]:
    """(first, median of the next ``rounds``) in milliseconds."""
    times = []
    for _ in range(rounds + 1):
        began = time.perf_counter()
        answer = get(path)  # type: ignore[operator]
        times.append((time.perf_counter() - began) * 1000)
        assert answer.status_code == 200, (path, answer.status_code)
    return times[0], statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=1_000, help="recorded steps of each metric per run")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    from starlette.testclient import TestClient

    from afs_dashboard.app import Settings, create_app

    with tempfile.TemporaryDirectory() as home:
        store = Store(Path(home) / "afs.db")
        began = time.perf_counter()
        fill(store, args.runs, args.events, args.steps)
        print(f"filled: {args.runs} runs, {args.events:,} events, {args.runs * args.steps * 2:,} metric values "
              f"in {time.perf_counter() - began:.1f} s")
        with TestClient(create_app(store, Settings()), base_url="http://127.0.0.1") as web:
            for label, path in (("runs page", "/runs"), ("a run's page", "/runs/run-042"),
                                ("a run's page (JSON)", "/runs/run-042.json")):
                first, median = timed(web.get, path, args.rounds)
                print(f"{label:<22} first {first:6.1f} ms   median of {args.rounds} {median:6.1f} ms")


if __name__ == "__main__":
    main()
