"""What an adversarial tester found: rows older versions stored with bare NaN, curves
past the float range, a store file replaced under the dashboard, hostile query values,
and run ids no path can carry as they are."""

from __future__ import annotations

import html
import json
import math
import os
import re
import sqlite3

import pytest
from starlette.testclient import TestClient

from afs_core.delivery.store import Store
from afs_core.testing import make_event
from afs_dashboard.app import Settings, create_app, run_url
from afs_dashboard.svg import line_chart


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "afs.db")


def client(store, **settings):
    return TestClient(create_app(store, Settings(**settings)), base_url="http://127.0.0.1:8765")


def an_old_diverged_run(store):
    """A run whose end was stored, as older versions did, with a bare NaN in its text
    (not JSON: SQLite's json_extract fails on it), beside a sound run."""
    store.enqueue(make_event("training_started", title="Training started", run_id="sound"), [])
    store.enqueue(make_event("training_started", title="Training started", run_id="diverged"), [])
    end = make_event("training_completed", title="Training completed", run_id="diverged", model_name="gpt",
                     context={"duration": 5.0, "final_loss": 1.0}, cost=2.5)
    store.enqueue(end, [])
    with sqlite3.connect(store.path) as db:
        [(text,)] = db.execute("SELECT data FROM events WHERE event_id = ?", (end.event_id,)).fetchall()
        old = json.dumps({**json.loads(text), "context": {"duration": 5.0, "final_loss": math.nan,
                                                          "lr": math.inf}})
        assert "NaN" in old and "Infinity" in old
        db.execute("UPDATE events SET data = ? WHERE event_id = ?", (old, end.event_id))


def test_a_row_with_a_bare_nan_hides_no_run_and_its_page_opens(store):
    an_old_diverged_run(store)
    runs = {run.run_id: run for run in store.runs()}
    assert set(runs) == {"sound", "diverged"}
    # What SQLite cannot read of that row is read as Python reads it: the run still ended.
    diverged = runs["diverged"]
    assert diverged.state_event == "training_completed" and diverged.duration == 5.0 and diverged.cost == 2.5
    assert [cost for _, cost in store.run_costs("diverged")] == [2.5]
    with client(store) as web:
        listed = web.get("/runs.json")
        assert listed.status_code == 200
        assert {run["run_id"] for run in listed.json()["runs"]} == {"sound", "diverged"}
        assert web.get("/runs").status_code == 200
        assert web.get("/runs/diverged").status_code == 200
        twin = web.get("/runs/diverged.json")
        assert twin.status_code == 200
        [end] = [e for e in twin.json()["events"] if e["event_type"] == "training_completed"]
        assert end["context"]["final_loss"] == "NaN" and end["context"]["lr"] == "Infinity"


def test_a_curve_past_the_float_range_draws_no_nan():
    drawn = str(line_chart([(0, -1e308), (1, 1e308), (2, math.inf), (3, math.nan), (4, -math.inf)], label="big"))
    assert not re.search(r"nan|inf", re.sub(r"<title>.*?</title>", "", drawn), re.I)
    assert "3 not drawn: NaN or infinite" in drawn
    points = re.search(r' points="([^"]+)"', drawn).group(1).split()
    assert points == ["64.0,172.0", "628.0,12.0"]  # the lowest at the bottom left, the highest at the top right
    assert 'data-points="2"' in drawn and 'data-skipped="3"' in drawn
    # One value at the float's end, on one huge step: a point, neither overflow nor division by zero.
    for chart in (line_chart([(1e20, 1.79e308), (1e20, 1.79e308)], label="edge"),
                  line_chart([(1e300, 1e308)], label="dot", x_is_time=True),
                  line_chart([(0, -5e-324), (1, 5e-324)], label="tiny")):
        assert not re.search(r"nan|inf", re.sub(r"<title>.*?</title>", "", str(chart)), re.I)
    assert 'data-points="0"' in line_chart([(0, math.nan)], label="x")


def test_pages_work_on_a_store_file_put_in_place_of_the_one_opened(store, tmp_path):
    # Another process set a damaged store aside and put a file without the tables in its place.
    store.enqueue(make_event(run_id="run-1"), [])
    with client(store) as web:
        assert web.get("/runs").status_code == 200
        other = tmp_path / "other.db"
        with sqlite3.connect(other) as db:
            db.execute("CREATE TABLE unrelated (x)")
        os.replace(other, store.path)
        for leftover in ("-wal", "-shm"):  # the set-aside file's, as the store's recovery removes them
            os.unlink(f"{store.path}{leftover}")
        for path in ("/runs", "/runs.json", "/outbox", "/channels", "/version"):
            assert web.get(path).status_code == 200, path
        assert web.get("/runs/run-1").status_code == 404  # the new file has no such run


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e999", "9" * 5000, "abc"])
def test_a_time_that_is_no_time_is_a_400(store, value):
    store.enqueue(make_event(run_id="run-1"), [])
    with client(store) as web:
        for path in ("/runs/run-1", "/runs/run-1.json", "/run?id=run-1", "/run.json?id=run-1"):
            assert web.get(path, params={"before": value}).status_code == 400, (path, value)


@pytest.mark.parametrize("count", ["9" * 5000, "\u00b2", "\u0661\u0662"])
def test_an_outbox_note_with_no_count_is_left_out(store, count):
    with client(store) as web:
        answer = web.get("/outbox", params={"note": "flushed", "went": count, "total": "1", "dead": "0", "left": "0"})
        assert answer.status_code == 200 and "pending deliveries went out" not in answer.text
        told = web.get("/outbox", params={"note": "flushed", "went": "1", "total": "1", "dead": "0", "left": "0"})
        assert "1 of 1 pending deliveries went out" in told.text


#: (An id with a % is left to the real server: the test client decodes a path twice.)
IDS = ["configs/llama.json", "dot.json.json", ".json", "..", ".", "a/b", "a/../b", "q?x=1", "h#frag", "sp ace",
       "\u00e9t\u00e9", "runs", "x.JSON", "plain"]


def test_every_run_id_is_reached_by_its_link(store):
    for run_id in IDS:
        store.enqueue(make_event("training_started", title="Training started", run_id=run_id), [])
    with client(store) as web:
        page = web.get("/runs").text
        links = [html.unescape(link) for link in re.findall(r'<a href="(/runs?[/?][^"]*)"', page)]
        assert len(links) == len(IDS)
        for run_id in IDS:
            link = run_url(run_id)
            assert link in links, run_id
            path = link.split("?", 1)[0]
            # Nothing a browser would rewrite (a . or .. segment), nothing read as the JSON twin.
            assert not {".", ".."} & set(path.split("/")) and not path.endswith(".json"), link
            answer = web.get(link)
            assert answer.status_code == 200, (run_id, link)
            title = re.search(r"<title>(.*?)</title>", answer.text, re.S).group(1)
            assert html.unescape(title).startswith(f"Run {run_id} "), (run_id, link)
            twin = web.get(path + ".json" + link[len(path):]) if path != "/run" else web.get(
                "/run.json" + link[len(path):])
            assert twin.status_code == 200 and twin.json()["run_id"] == run_id, (run_id, link)
        # The older addresses still work.
        assert web.get("/runs/plain.json").json()["run_id"] == "plain"
        assert web.get("/runs/configs%2Fllama.json.json").json()["run_id"] == "configs/llama.json"
        assert web.get("/run").status_code == 400


def test_the_older_events_link_keeps_the_run(store):
    for n in range(501):
        store.enqueue(make_event("checkpoint_saved", title=f"Checkpoint {n}", run_id="x.json"), [])
    with client(store) as web:
        page = web.get(run_url("x.json")).text
        older = html.unescape(re.search(r'<a href="([^"]+)">Older events</a>', page).group(1))
        assert older.startswith("/run?id=x.json&before=")
        answer = web.get(older)
        assert answer.status_code == 200 and "Newest events" in answer.text
