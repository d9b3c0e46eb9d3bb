"""The playground in a real headless browser (Debian's chromium driven by Playwright) against
`turbovid serve --dev`: submit a wan-tiny job from the page, watch its progress move over the live
events, see the finished video play, and leave a screenshot in the test's output directory.

Needs /usr/bin/chromium (apt package `chromium`, installed by .ci/run) and the `playwright` package;
Playwright's own browser download (`playwright install`) is never used."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# sandbox-friendly flags: no sandbox (root in a container), no GPU, nothing fetched from the network
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def page(tmp_path: Path):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package (test extra)")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 1000})
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def test_playground_submits_a_job_shows_progress_and_plays_the_video(dev_stack, page, tmp_path):
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{dev_stack.base_url}/")
    assert page.title() == "TurboVid playground"
    assert page.is_hidden("#key-row")  # auth is off on the dev stack
    page.wait_for_function("document.querySelectorAll('#model option').length >= 2")
    page.select_option("#model", "wan-tiny")
    assert page.eval_on_selector("#size", "s => s.value") == "64x64"  # the model's default size
    assert page.is_hidden("#image-row")
    page.select_option("#size", "96x64")
    page.fill("#prompt", "a paper boat on a rainy street")
    page.fill("#seed", "7")
    page.click("#submit")
    page.wait_for_selector("#job:not([hidden])")
    job_id = page.text_content("#job-id")
    assert job_id and job_id.startswith("video_")

    page.wait_for_function("window.playground.events.some(e => e.type === 'completed' || e.type === 'failed')",
                           timeout=180_000)
    events = page.evaluate("window.playground.events.map(e => e.type)")
    assert events[-1] == "completed", (events, page.text_content("#job-error"))
    log = page.evaluate("window.playground.progressLog")
    assert log == sorted(log) and log[-1] == 100, log
    assert any(0 < p < 100 for p in log), f"progress never moved between 0 and 100 (are the worker's stage " \
                                          f"events published? issue 11, producer side): {log}"
    assert page.text_content("#progress-text") == "100 %"
    assert page.text_content("#status") == "completed"

    # the finished video: loaded, 9 frames at 16 fps, and playing
    page.wait_for_selector("#video-box:not([hidden])")
    page.wait_for_function("document.getElementById('video').readyState >= 2", timeout=30_000)
    duration = page.evaluate("document.getElementById('video').duration")
    assert 0.4 < duration < 0.8, duration  # 9 frames / 16 fps = 0.5625 s
    size = page.evaluate("[document.getElementById('video').videoWidth, document.getElementById('video').videoHeight]")
    assert size == [96, 64]
    page.evaluate("document.getElementById('video').play()")
    page.wait_for_function("(v => v.currentTime > 0 || v.ended)(document.getElementById('video'))", timeout=10_000)
    assert page.get_attribute("#download", "href").startswith("blob:")
    page.wait_for_function(f"document.getElementById('jobs').textContent.includes('{job_id}')")

    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"playground screenshot: {shot}")
    assert not errors, errors
