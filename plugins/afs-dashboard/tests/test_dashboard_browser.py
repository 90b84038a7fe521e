"""The dashboard as a person sees it: a real ``afs dashboard`` process, a store filled by
real training-code calls, pages opened in headless Chromium."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from afs_core.testing.loopback import Scripted

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_for(check: Callable[[], Any], what: str, seconds: float = 10.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds} s for {what}")
        time.sleep(0.1)


def no_dialog(browser: Any) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        browser.switch_to.alert  # noqa: B018 (the lookup is the check)
    except NoAlertPresentException:
        return True
    return False


def shoot(browser: Any, artefacts: Path, name: str) -> None:
    assert browser.save_screenshot(str(artefacts / f"{name}.png"))


def test_runs_page_lists_each_run_with_its_state(world, browser, artefacts):
    from selenium.webdriver.common.by import By

    browser.get(world["url"] + "/runs")
    rows = {row.get_attribute("data-run-id"): row for row in browser.find_elements(By.CSS_SELECTOR, "tr.run")}
    assert set(rows) == {"run-done", "run-live"}
    assert rows["run-done"].find_element(By.CSS_SELECTOR, ".state").text == "completed"
    assert rows["run-live"].find_element(By.CSS_SELECTOR, ".state").text == "running"
    assert "tiny-gpt" in rows["run-done"].text and "$12.50" in rows["run-done"].text and "6m 00s" in rows["run-done"].text
    # Times are the viewer's (Tokyo, UTC+9), converted by the page's own script.
    started = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "tr.run time.local"), "local times")[0]
    assert "UTC" not in started.text and ("GMT+9" in started.text or "JST" in started.text)
    shoot(browser, artefacts, "runs")


def test_run_page_draws_each_metric_with_every_point(world, browser, artefacts):
    from selenium.webdriver.common.by import By

    browser.get(world["url"] + "/runs/run-done")
    loss = browser.find_element(By.CSS_SELECTOR, 'figure[data-metric="loss"]')
    assert "25 points" in loss.text
    points = loss.find_element(By.CSS_SELECTOR, "polyline").get_attribute("points").split()
    assert len(points) == 25
    accuracy = browser.find_element(By.CSS_SELECTOR, 'figure[data-metric="accuracy"] polyline')
    assert len(accuracy.get_attribute("points").split()) == 25
    assert browser.find_element(By.CSS_SELECTOR, 'figure[data-metric="cost"]').is_displayed()
    shoot(browser, artefacts, "run")


def test_event_text_is_shown_as_text_and_never_runs(world, browser, artefacts):
    from selenium.webdriver.common.by import By

    browser.get(world["url"] + "/runs/run-done")
    titles = [t.text for t in browser.find_elements(By.CSS_SELECTOR, ".event .title")]
    assert "<img src=x onerror=alert(1)>" in titles
    assert "<script>alert(2)</script> & more" in browser.find_element(By.CSS_SELECTOR, ".timeline").text
    assert browser.find_elements(By.CSS_SELECTOR, ".timeline img, .timeline script") == []
    time.sleep(0.5)  # an injected handler would have fired by now
    assert no_dialog(browser)


def test_a_failed_delivery_shows_its_reason(world, browser, artefacts):
    from selenium.webdriver.common.by import By

    browser.get(world["url"] + "/runs/run-done")
    started = next(e for e in browser.find_elements(By.CSS_SELECTOR, ".event")
                   if "Training started" in e.find_element(By.CSS_SELECTOR, ".title").text)
    delivery = started.find_element(By.CSS_SELECTOR, 'tr.delivery[data-channel="hook"]')
    assert "dead" in delivery.text and "HTTP 403: token revoked" in delivery.text
    browser.get(world["url"] + "/channels")
    hook = browser.find_element(By.CSS_SELECTOR, 'tr.channel[data-channel="hook"]')
    assert "configured" in hook.text
    assert "HTTP 403: token revoked" in browser.find_element(By.CSS_SELECTOR, 'section.failures[data-channel="hook"]').text
    shoot(browser, artefacts, "channels")


def test_retry_sends_the_dead_delivery_to_the_service(world, browser, artefacts):
    from selenium.webdriver.common.by import By

    hook = world["hook"]
    before = len(hook.received)
    browser.get(world["url"] + "/outbox")
    dead = browser.find_elements(By.CSS_SELECTOR, "table.dead tr.delivery")
    assert len(dead) == 1 and "token revoked" in dead[0].text
    shoot(browser, artefacts, "outbox")
    dead[0].find_element(By.CSS_SELECTOR, "button.retry").click()
    note = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "p.note"), "the retry's answer", 20)
    assert "was sent again" in note[0].text, note[0].text
    sent = wait_for(lambda: hook.received[before:], "the webhook to receive the event")
    assert sent[-1].json["type"] == "training_started"
    assert browser.find_elements(By.CSS_SELECTOR, "table.dead tr.delivery") == []
    shoot(browser, artefacts, "outbox-after-retry")


def test_flush_delivers_what_is_pending(world, browser, artefacts):
    from selenium.webdriver.common.by import By

    hook = world["hook"]
    hook.respond(Scripted(status=503, body="busy, come back later", headers={"Retry-After": "3600"}))
    waiting = subprocess.run(
        [sys.executable, "-c", "from afs_core import NotificationManager\n"
         "m = NotificationManager.from_env()\n"
         "m.notify_checkpoint_saved(model_name='tiny-gpt', run_id='run-done', checkpoint_path='/ckpt/9')\n"
         "m.close(timeout=2)"],
        env={**world["env"], "AFS_FLUSH_TIMEOUT": "0"}, cwd=world["root"], capture_output=True, text=True, timeout=60)
    assert waiting.returncode == 0, waiting.stderr
    before = len(hook.received)
    browser.get(world["url"] + "/outbox")
    pending = browser.find_elements(By.CSS_SELECTOR, "table.pending tr.delivery")
    assert len(pending) == 1 and "HTTP 503: busy, come back later" in pending[0].text
    browser.find_element(By.ID, "flush").click()
    note = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "p.note"), "the flush's answer", 20)
    assert "1 of 1 pending deliveries went out" in note[0].text, note[0].text
    sent = wait_for(lambda: hook.received[before:], "the webhook to receive the checkpoint")
    assert sent[-1].json["type"] == "checkpoint_saved"
    assert browser.find_elements(By.CSS_SELECTOR, "table.pending tr.delivery") == []
    shoot(browser, artefacts, "outbox-after-flush")


def test_a_post_without_the_csrf_token_is_refused(world):
    request = urllib.request.Request(world["url"] + "/outbox/flush", data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        OPENER.open(request, timeout=10)
    assert refused.value.code == 403 and b"CSRF" in refused.value.read()


def test_the_pages_have_json_twins(world):
    with OPENER.open(world["url"] + "/runs.json", timeout=10) as answer:
        runs = json.load(answer)["runs"]
    assert {r["run_id"]: r["state"] for r in runs} == {"run-done": "completed", "run-live": "running"}


def test_it_will_not_listen_beyond_loopback_without_a_token(world, tmp_path):
    done = subprocess.run([sys.executable, "-m", "afs_core", "dashboard", "--host", "0.0.0.0", "--port", "0"],
                          env=world["env"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--token" in done.stderr and "0.0.0.0" in done.stderr


def test_the_page_follows_the_store_without_a_reload(world, browser, artefacts):
    from selenium.webdriver.common.by import By

    browser.get(world["url"] + "/runs")
    browser.execute_script("document.body.setAttribute('data-marker', 'same page')")
    added = subprocess.run(
        [sys.executable, "-c", "from afs_core import NotificationManager\n"
         "with NotificationManager.from_env() as m: m.notify_training_started(model_name='late', run_id='run-new')"],
        env=world["env"], cwd=world["root"], capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    row = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, 'tr.run[data-run-id="run-new"]'), "the new run", 15)
    assert row[0].find_element(By.CSS_SELECTOR, ".state").text == "running"
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-marker") == "same page"
    assert row[0].find_elements(By.CSS_SELECTOR, "time.local")  # the swapped-in page's times are local too
    shoot(browser, artefacts, "runs-live")
