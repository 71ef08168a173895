"""``ltpa report``: one self-contained HTML page per run, checked in a real headless browser (Chromium)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CLUTTERED_OPTIONS, data_option_flags, tiny_train_config

from ltpa.cli import main

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BROWSER_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of `ltpa train` (metrics included): att2 on 16x16 cluttered digits, 2 short epochs."""
    from ltpa.train import fit

    root = tmp_path_factory.mktemp("report")
    options = {**CLUTTERED_OPTIONS, "num_train": 192, "num_test": 64}
    cfg = tiny_train_config(
        root,
        "att2",
        model="vgg_att2_concat_pc",
        data_options=options,
        model_kwargs={"drop_scale": 0.0},
        threads=1,
    )
    return fit(cfg).run_dir


def _report(run: Path, out: Path, *extra: str) -> Path:
    options = {**CLUTTERED_OPTIONS, "num_train": 192, "num_test": 64}
    args = ["report", str(run), *data_option_flags(options), "--examples", "3", "--attack-images", "32"]
    assert main([*args, "--eps", "0,4", "--out", str(out), "--device", "cpu", *extra]) == 0
    return out / f"{run.name}.html"


@pytest.mark.slow
def test_report_is_one_self_contained_page(trained_run: Path, tmp_path: Path) -> None:
    page = _report(trained_run, tmp_path / "out").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 4  # curves, maps, confusion matrix, FGSM
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched from elsewhere
    history = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    accuracy = f"{100 * history[-1]['test_accuracy']:.1f}%"
    assert f"<td>{accuracy}</td>" in page  # the last epoch's test accuracy, all 64 test images scored
    assert "one training run per model (seed 0)" in page
    assert "<td>0</td><td>" in page and "fooling rate" in page


@pytest.mark.slow
def test_report_of_two_runs_and_without_metrics(
    trained_run: Path, trained_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["report", str(trained_run), str(trained_runs["vgg"]), *data_option_flags(), "--examples", "2"]
    assert main([*args, "--attack-images", "0", "--out", str(tmp_path), "--device", "cpu"]) == 0
    page = (tmp_path / "att2+vgg.html").read_text()
    assert page.count("<img ") == 1 + 2 + 2  # curves (only att2 has metrics), maps and confusion per run
    assert "Robustness" not in page
    assert capsys.readouterr().out.strip() == str(tmp_path / "att2+vgg.html")


def test_report_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["report", str(tmp_path / "missing"), "--data", "cluttered-digits", "--out", str(tmp_path)]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("ltpa report: error: no checkpoint") and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.html"))


def test_curves_keep_one_colour_per_run_in_both_panels() -> None:
    from _figures import assert_readable

    from ltpa.report import curves_figure

    def history(offset: float) -> list[dict[str, Any]]:
        return [
            {"epoch": e, "train_loss": 2 - e / 4 + offset, "test_loss": 2.1 - e / 4, "train_accuracy": 0.2 * e,
             "test_accuracy": 0.18 * e + offset}
            for e in range(1, 5)
        ]  # fmt: skip

    fig = curves_figure({"att2": history(0.0), "vgg": history(0.05)}, title="training on cluttered-digits")
    texts = assert_readable(fig)
    assert {"att2", "vgg", "test split", "training batches", "accuracy (%)"} <= set(texts)
    loss, accuracy = (ax.get_lines() for ax in fig.axes[:2])
    # each run draws a dashed training and a solid held-out line per panel, in its own colour
    assert [line.get_color() for line in loss] == [line.get_color() for line in accuracy]
    assert loss[0].get_color() == loss[1].get_color() != loss[2].get_color() == loss[3].get_color()
    assert [line.get_linestyle() for line in loss] == ["--", "-", "--", "-"]
    assert max(accuracy[1].get_ydata()) == pytest.approx(72.0)  # in percent
    assert curves_figure({"att2": []}) is None


def test_attack_figure_names_the_attack_and_n_and_keeps_colours() -> None:
    from _figures import assert_readable

    from ltpa.evaluate import attack_figure, model_colours

    rows = [
        {"model": m, "method": "fgsm", "eps": e, "accuracy": a, "fooling_rate": 1 - a, "n": 256}
        for m in ("att2", "vgg")
        for e, a in ((0, 0.9), (4, 0.5))
    ]
    fig = attack_figure(rows)
    texts = assert_readable(fig)
    assert "FGSM robustness, n=256 images" in texts
    colours = model_colours(["att2", "vgg"])
    for ax in fig.axes[:2]:
        assert [line.get_color() for line in ax.get_lines()] == [colours["att2"], colours["vgg"]]


# ------------------------------------------------------------------------------------------ headless browser


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Browser:
    """Chromium driven through chromedriver's W3C WebDriver HTTP API (no client library needed)."""

    def __init__(self, base: str, session: str) -> None:
        self.base, self.session = base, session

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return _call(self.base, method, f"/session/{self.session}{path}", body)

    def open(self, page: Path) -> None:
        self.call("POST", "/url", {"url": page.resolve().as_uri()})

    def run(self, script: str) -> Any:
        return self.call("POST", "/execute/sync", {"script": script, "args": []})

    def console(self) -> list[dict[str, Any]]:
        """Browser console entries since the last call."""
        return list(self.call("POST", "/se/log", {"type": "browser"}))


def _call(base: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["value"]


@pytest.fixture(scope="module")
def browser() -> Iterator[_Browser]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(
            "Chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)"
        )
    port = _free_port()
    driver = subprocess.Popen(
        [CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    profile = tempfile.mkdtemp(prefix="ltpa-chromium-")
    try:
        for _ in range(200):
            try:
                _call(base, "GET", "/status")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        options = {"binary": CHROMIUM, "args": [*BROWSER_FLAGS, f"--user-data-dir={profile}"]}
        capabilities = {
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "goog:loggingPrefs": {"browser": "ALL"},
        }
        session = _call(base, "POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})[
            "sessionId"
        ]
        try:
            yield _Browser(base, session)
        finally:
            _call(base, "DELETE", f"/session/{session}")
    finally:
        driver.terminate()
        driver.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)


_IMAGES = "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"


def _problems(browser: _Browser, page: Path) -> list[str]:
    """Images that did not render and console errors of ``page`` in the browser."""
    browser.console()  # forget earlier pages' messages
    browser.open(page)
    images = browser.run(_IMAGES)
    problems = [
        f"image {alt!r} did not render" for alt, complete, w, h in images if not (complete and w and h)
    ]
    problems += [f"console: {e['message']}" for e in browser.console() if e["level"] in ("SEVERE", "WARNING")]
    if not images:
        problems.append("no image on the page")
    return problems


@pytest.mark.slow
def test_report_renders_in_a_real_browser(trained_run: Path, tmp_path: Path, browser: _Browser) -> None:
    page = _report(trained_run, tmp_path / "out")
    assert _problems(browser, page) == []
    assert len(browser.run(_IMAGES)) == 4
    widths = browser.run("return Array.from(document.images).map(i => i.naturalWidth)")
    assert min(widths) >= 300  # real figures, not icons
    assert browser.run("return document.title").startswith("ltpa report: att2")


@pytest.mark.slow
def test_the_browser_check_sees_a_broken_image_and_a_console_error(tmp_path: Path, browser: _Browser) -> None:
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title></head><body>'
        '<img alt="cut" src="data:image/png;base64,iVBORw0KGgo=">'
        '<script>console.error("something failed")</script></body></html>'
    )
    problems = _problems(browser, page)
    assert "image 'cut' did not render" in problems
    assert any("something failed" in p for p in problems)
