"""The playground with auth on, in headless Debian chromium (Playwright): the API key field, the key sent
only as an Authorization header (never in a URL), a queued job's place in the queue shown live.
No worker runs here (one is only advertised), so the jobs stay queued. The full run (progress, video)
is tests/e2e/test_playground.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from gateway_support import KEY_A, UvicornThread, advertise_worker, clean_redis, make_settings, png_bytes

from service.app import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_api_key_field_queue_position_and_no_key_in_urls(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package (test extra)")
    with clean_redis():
        settings = make_settings(tmp_path)
        advertise_worker(settings)
        with UvicornThread(create_app(settings)) as server, sync_api.sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                            headless=True, args=CHROMIUM_ARGS)
            try:
                page = context.pages[0] if context.pages else context.new_page()
                urls: list[str] = []
                auth_headers: list[str | None] = []
                page.on("request", lambda r: (urls.append(r.url), auth_headers.append(r.headers.get("authorization"))))
                page.goto(f"{server.url}/playground")
                assert page.is_visible("#key-row")
                page.wait_for_function("document.getElementById('form-error').textContent.includes('API key')")
                page.fill("#api-key", KEY_A)
                page.dispatch_event("#api-key", "change")
                page.wait_for_function("document.querySelectorAll('#model option').length >= 2")
                assert page.text_content("#form-error") == ""
                page.click("#submit")
                page.wait_for_function("document.getElementById('queue-position').textContent.includes('0 ahead')")
                assert page.text_content("#status") == "queued"
                job_id = page.text_content("#job-id")
                page.click("#submit")  # a second job queues behind the first
                page.wait_for_function("document.getElementById('queue-position').textContent.includes('1 ahead')")
                page.wait_for_function(f"document.getElementById('jobs').textContent.includes('{job_id}')")
                # image-to-video: the image field appears for an I2V model and the upload goes with the job
                second_id = page.text_content("#job-id")
                page.select_option("#model", "wan-tiny-i2v")
                assert page.is_visible("#image-row")
                png = tmp_path / "first-frame.png"
                png.write_bytes(png_bytes(96, 64))
                page.set_input_files("#image", str(png))
                page.click("#submit")
                page.wait_for_function(f"document.getElementById('job-id').textContent !== '{second_id}' && "
                                       "document.getElementById('job-id').textContent.startsWith('video_')")
                i2v_id = page.text_content("#job-id")
                page.wait_for_function(f"document.getElementById('jobs').textContent.includes('{i2v_id}')")
                assert "wan-tiny-i2v" in page.text_content("#jobs")
                assert page.evaluate("localStorage.getItem('turbovid.apiKey')") == KEY_A
                assert not [u for u in urls if KEY_A in u]
                assert f"Bearer {KEY_A}" in auth_headers
                page.screenshot(path=str(tmp_path / "playground-auth.png"), full_page=True)
            finally:
                context.close()


def test_docs_render_offline_with_an_authorize_button(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package (test extra)")
    with clean_redis():
        with UvicornThread(create_app(make_settings(tmp_path))) as server, sync_api.sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                            headless=True, args=CHROMIUM_ARGS)
            try:
                page = context.pages[0] if context.pages else context.new_page()
                hosts: set[str] = set()
                page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
                page.goto(f"{server.url}/docs")
                page.wait_for_selector(".swagger-ui .btn.authorize", timeout=20_000)
                page.wait_for_selector('[data-path="/v1/videos/{video_id}/events"]')
                assert page.locator(".opblock").count() >= 10
                assert hosts == {server.url.split("/")[2]}, hosts  # everything from the gateway itself
            finally:
                context.close()
