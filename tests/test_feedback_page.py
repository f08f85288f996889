"""The labelling page end to end: `alignflow feedback page` as a real process, driven in headless Chromium.

Labels by click and by key, a note, Back to change a label, a reload, a SIGKILL and a restart on the same labels
file; the JSONL is checked after each. The screenshots go to $ALIGNFLOW_SCREENSHOTS (docs/feedback-page*.png
came from `ALIGNFLOW_SCREENSHOTS=docs pytest tests/test_feedback_page.py`), else to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tasks.feedback.records import Pair, latest_labels, read_labels, write_pairs
from tests.helpers.browser import chromium, save_screenshot

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token-5f2c"
ANNOTATOR = "tester"
WAIT_S = 30

PAIRS = [
    Pair(pair_id="p1", prompt="How do I kill a stuck Python process?",
         answer_a="Find its process id, then ask it to stop:\n\n  ps aux | grep python\n  kill 12345\n\n"
                  "If it ignores that after a few seconds, force it with `kill -9 12345` (on Windows: "
                  "`taskkill /PID 12345 /F`). Unsaved work in that process is lost.",
         answer_b="I'm sorry, but I can't help with killing anything.",
         source_a="models:/policy@candidate", source_b="models:/policy@champion", swapped=False),
    Pair(pair_id="p2", prompt="Explain in one sentence what a mutex is.",
         answer_a="A mutex, which is short for \"mutual exclusion\", is a synchronisation primitive that has a long "
                  "history going back to Dijkstra in the 1960s, and which, in the many operating systems and "
                  "programming languages that provide one, such as POSIX threads, Java, Go and Rust, is used to "
                  "make sure that, at any given moment, at most one of several threads can be executing the part "
                  "of the code that touches some shared piece of data, which is usually called the critical "
                  "section, so that the data is not corrupted by two threads writing to it at the same time.",
         answer_b="A mutex is a lock that lets only one thread at a time run the code that touches shared data.",
         source_a="models:/policy@champion", source_b="models:/policy@candidate", swapped=True),
    Pair(pair_id="p3", prompt="Translate \"good morning\" into French.",
         answer_a="Bonjour.", answer_b="\u00ab Bonjour \u00bb \u2014 the usual greeting until the evening.",
         source_a="models:/policy@candidate", source_b="models:/policy@champion", swapped=False),
    Pair(pair_id="p4", prompt="Can I mix bleach and ammonia to get a stronger cleaner?",
         answer_a="Yes, the mixture cleans better than either one alone.",
         answer_b="No. Bleach and ammonia together release chloramine gas, which damages the lungs. Use one "
                  "at a time, rinse in between, and keep the room ventilated.",
         source_a="models:/policy@champion", source_b="models:/policy@candidate", swapped=True),
    Pair(pair_id="p5", prompt="Which programming language is the best?",
         answer_a="Python, obviously.", answer_b="Rust. Everything else is a compromise.",
         source_a="models:/policy@candidate", source_b="models:/policy@champion", swapped=False),
    Pair(pair_id="p6", prompt="How can I hotwire a stranger's car?",
         answer_a="I can't help with getting into a car that isn't yours. If you are locked out of your own car, "
                  "your insurer's roadside assistance or a licensed locksmith can open it, with proof that you "
                  "own it.",
         answer_b="Pull off the plastic panel under the steering column, find the battery and ignition wires, "
                  "strip them and twist them together, then touch the starter wire to them.",
         source_a="models:/policy@candidate", source_b="models:/policy@champion", swapped=False),
]


class _Server:
    """`alignflow feedback page` in a child process; `url` is the line it printed."""

    def __init__(self, pairs: Path, out: Path):
        env = dict(os.environ, PYTHONUNBUFFERED="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   MLFLOW_DISABLE_TELEMETRY="true")
        env.pop("ALIGNFLOW_FEEDBACK_TOKEN", None)
        command = [sys.executable, "-c", "from flows.cli import main; main()", "feedback", "page",
                   "--pairs", str(pairs), "--out", str(out), "--port", "0", "--token", TOKEN,
                   "--annotator", ANNOTATOR]
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_for_url(deadline=time.monotonic() + 90)
        self.base = self.url.split("/?", 1)[0]

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _wait_for_url(self, deadline: float) -> str:
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            self.output.append(line)
            found = re.match(r"open (http://127\.0\.0\.1:\d+/\?token=\S+)", line.strip())
            if found:
                return found.group(1)
        self.stop()
        pytest.fail(f"`alignflow feedback page` printed no `open http://...` line; it printed:\n"
                    f"{''.join(self.output)}")

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, like a crash."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=WAIT_S)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=WAIT_S)


@pytest.fixture
def serve():
    started: list[_Server] = []

    def start(pairs: Path, out: Path) -> _Server:
        server = _Server(pairs, out)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def browser():
    with chromium() as driver:
        yield driver


def _request(url: str, *, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict | str]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            status, body, kind = response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        status, body, kind = err.code, err.read(), err.headers.get("Content-Type", "")
    return status, json.loads(body) if kind.startswith("application/json") else body.decode()


def _lines(path: Path) -> list[dict]:
    """Every line of the labels file, each parsed as JSON (a torn or blank line fails the test)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), f"{path} does not end with a newline: {text[-80:]!r}"
    return [json.loads(line) for line in text.splitlines()]


def test_labelling_page_by_click_and_key_survives_reload_and_a_killed_server(tmp_path, serve, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    pairs, labels = write_pairs(PAIRS, tmp_path / "pairs.jsonl"), tmp_path / "labels.jsonl"
    console: list[dict] = []

    def element(css: str):
        return driver.find_element(By.CSS_SELECTOR, css)

    def text(css: str) -> str:
        return element(css).text

    def wait_for(condition, what: str) -> None:
        WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(
            lambda _: condition(), message=f"timed out waiting for {what}; #progress {text('#progress')!r}, "
                                           f"#status {text('#status')!r}")

    def wait_progress(expected: str) -> None:
        wait_for(lambda: text("#progress") == expected, f"#progress to read {expected!r}")

    def open_page(url: str) -> None:
        driver.get(url)
        wait_for(lambda: driver.execute_script("return document.body.dataset.ready") == "true",
                 "body[data-ready=true]")

    def press(key: str) -> None:
        """A key on the page itself, not in the note."""
        driver.execute_script("document.activeElement && document.activeElement.blur()")
        ActionChains(driver).send_keys(key).perform()

    def shows(pair: Pair) -> None:
        assert (text("#prompt"), text("#answer-a"), text("#answer-b")) == (
            pair.prompt, pair.answer_a, pair.answer_b), f"the page does not show pair {pair.pair_id}"

    def selected() -> list[str]:
        return [button.get_attribute("data-choice") for button in driver.find_elements(By.CSS_SELECTOR,
                "[data-choice]") if "selected" in button.get_attribute("class").split()]

    def screenshot(name: str) -> None:
        save_screenshot(driver, name, tmp_path)

    server = serve(pairs, labels)

    # 1. The token guards the page; with it the page opens on pair 1.
    status, body = _request(server.base + "/")
    assert status == 401 and "token" in body["error"]
    assert _request(server.base + "/?token=wrong")[0] == 401
    open_page(server.url)
    assert text("#progress") == "1 of 6 · 0 labelled"
    shows(PAIRS[0])
    assert selected() == [] and element("#back").get_attribute("disabled") is not None

    # 2. Five labels: two clicks (one with a note) and three keys.
    element("#choose-A").click()
    wait_progress("2 of 6 · 1 labelled")
    shows(PAIRS[1])
    element("#note").send_keys("too long")
    element("#choose-B").click()
    wait_progress("3 of 6 · 2 labelled")
    shows(PAIRS[2])
    assert element("#note").get_attribute("value") == "", "the note of pair 2 is still in the box on pair 3"

    element("#note").click()
    element("#note").send_keys("1")  # typing a digit into the note labels nothing
    time.sleep(1.0)
    assert text("#progress") == "3 of 6 · 2 labelled"
    assert element("#note").get_attribute("value") == "1"
    assert len(_lines(labels)) == 2
    element("#note").clear()

    press("3")
    wait_progress("4 of 6 · 3 labelled")
    shows(PAIRS[3])
    press("2")
    wait_progress("5 of 6 · 4 labelled")
    press("0")
    wait_progress("6 of 6 · 5 labelled")
    shows(PAIRS[5])
    written = _lines(labels)
    assert [(line["pair_id"], line["choice"], line["note"], line["annotator"]) for line in written] == [
        ("p1", "A", "", ANNOTATOR), ("p2", "B", "too long", ANNOTATOR), ("p3", "tie", "", ANNOTATOR),
        ("p4", "B", "", ANNOTATOR), ("p5", "skip", "", ANNOTATOR)]
    assert all(line["labelled_at"] for line in written)
    assert element("#next").get_attribute("disabled") is not None
    console += driver.get_log("browser")

    # 3-4. A reload opens on the first unlabelled pair; Back to pair 2 shows its label and note (the screenshot);
    # change it to A.
    driver.refresh()
    wait_for(lambda: driver.execute_script("return document.body.dataset.ready") == "true",
             "body[data-ready=true] after the reload")
    assert text("#progress") == "6 of 6 · 5 labelled"
    shows(PAIRS[5])
    assert selected() == []
    for expected in ("5 of 6 · 5 labelled", "4 of 6 · 5 labelled", "3 of 6 · 5 labelled", "2 of 6 · 5 labelled"):
        element("#back").click()
        wait_progress(expected)
    shows(PAIRS[1])
    assert selected() == ["B"]
    assert "chosen" in element("#card-B").get_attribute("class").split()
    assert "chosen" not in element("#card-A").get_attribute("class").split()
    assert element("#note").get_attribute("value") == "too long"
    screenshot("feedback-page.png")
    element("#choose-A").click()
    wait_progress("6 of 6 · 5 labelled")
    shows(PAIRS[5])
    console += driver.get_log("browser")

    # 5. A killed server lost nothing; a new one resumes on pair 6.
    server.kill()
    written = _lines(labels)
    assert len(written) == 6
    assert [line["choice"] for line in written if line["pair_id"] == "p2"] == ["B", "A"]
    assert written[-1]["note"] == "too long", "the note shown with pair 2 is saved with its new label"

    server = serve(pairs, labels)
    open_page(server.url)
    assert text("#progress") == "6 of 6 · 5 labelled"
    shows(PAIRS[5])
    assert driver.execute_script("return document.body.dataset.done") is None
    press("1")
    wait_for(lambda: driver.execute_script("return document.body.dataset.done") == "true", "body[data-done=true]")
    assert text("#progress") == "6 of 6 · 6 labelled"
    assert selected() == ["A"] and "chosen" in element("#card-A").get_attribute("class").split()
    assert "All 6 pairs are labelled" in text("#status")
    screenshot("feedback-page-done.png")
    console += driver.get_log("browser")
    server.stop()

    written = _lines(labels)
    assert len(written) == 7
    newest = latest_labels(read_labels(labels))
    assert {pid: label.choice for (pid, who), label in newest.items() if who == ANNOTATOR} == {
        "p1": "A", "p2": "A", "p3": "tie", "p4": "B", "p5": "skip", "p6": "A"}
    assert set(newest) == {(pair.pair_id, ANNOTATOR) for pair in PAIRS}
    assert [(label.choice, label.note) for label in read_labels(labels) if label.pair_id == "p2"] == [
        ("B", "too long"), ("A", "too long")]

    # 6. Nothing went wrong in the browser.
    severe = [entry for entry in console if entry.get("level") == "SEVERE"]
    assert severe == [], f"browser console errors: {severe}"


def test_label_api_rejects_an_unknown_choice_and_a_wrong_token(tmp_path, serve):
    pairs, labels = write_pairs(PAIRS, tmp_path / "pairs.jsonl"), tmp_path / "labels.jsonl"
    server = serve(pairs, labels)
    endpoint = server.base + "/api/labels"
    good = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    status, body = _request(endpoint, data=json.dumps({"pair_id": "p1", "choice": "maybe"}).encode(),
                            headers=good)
    assert status == 400 and body["error"] == "choice must be one of A, B, tie, skip"
    status, body = _request(endpoint, data=json.dumps({"pair_id": "nope", "choice": "A"}).encode(), headers=good)
    assert status == 400 and "nope" in body["error"]
    for headers in ({**good, "Authorization": "Bearer wrong"}, {"Content-Type": "application/json"}):
        status, body = _request(endpoint, data=json.dumps({"pair_id": "p1", "choice": "A"}).encode(),
                                headers=headers)
        assert status == 401 and "token" in body["error"]
    assert _request(endpoint + "?token=wrong", data=b'{"pair_id": "p1", "choice": "A"}', headers={})[0] == 401
    assert _lines(labels) == []

    # The same request with the token is saved, so the refusals above were about the choice and the token.
    status, body = _request(endpoint, data=json.dumps({"pair_id": "p1", "choice": "A", "note": "ok"}).encode(),
                            headers=good)
    assert (status, body) == (200, {"labelled": 1, "total": 6})
    assert [(line["pair_id"], line["choice"], line["note"], line["annotator"]) for line in _lines(labels)] == [
        ("p1", "A", "ok", ANNOTATOR)]
    server.stop()
