"""The web page in a real browser: Debian's Chromium, headless, driven by Playwright, against gunicorn.

Skips (saying why) only when Playwright or a Chromium binary cannot be found; ``.ci/run`` installs
Chromium. Set CHROMIUM to use another binary.
"""

from __future__ import annotations

import base64
import os
import re
import shutil

import pytest
import requests
from test_serving_support import Gunicorn, cifar_jpegs, models_dir

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def find_chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "/usr/bin/chromium"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium binary found (apt-get install chromium, or set CHROMIUM=/path/to/chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, fresh_checkpoint):
    weights = models_dir(tmp_path_factory, fresh_checkpoint)
    service = Gunicorn(tmp_path_factory.mktemp("gunicorn-browser") / "gunicorn.log", MODELS_DIR=str(weights),
                       WORKERS="1")
    service.start()
    try:
        yield service.wait_ready()
    finally:
        service.stop()


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


@pytest.fixture()
def failed_requests() -> list[str]:
    """'STATUS PATH' of every response of 400 or more the page received; tests that expect one empty it."""
    return []


@pytest.fixture()
def page(browser, server, failed_requests):
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=30_000)
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(30_000)
    script_errors: list[str] = []
    page.on("pageerror", lambda exc: script_errors.append(str(exc)))
    page.on("response", lambda r: failed_requests.append(f"{r.status} {r.url.removeprefix(server.url)}")
            if r.status >= 400 else None)
    page.goto(server.url + "/")
    yield page
    context.close()
    assert script_errors == [] and failed_requests == []


@pytest.fixture(scope="module")
def cat_jpeg(data_archive) -> tuple[str, bytes]:
    _, name, data = cifar_jpegs(data_archive)[3]
    return name, data


def api_answer(server, name: str, data: bytes, topk: int = 5, model: str | None = None) -> list[dict]:
    query = {"topk": topk, **({"model": model} if model else {})}
    response = requests.post(server.url + "/predict", params=query, files={"img": (name, data)}, timeout=30)
    return response.json()["predictions"]


def shown_bars(page) -> list[dict]:
    return page.eval_on_selector_all("#results li", """items => items.map(li => ({
        label: li.querySelector('.label').textContent,
        value: li.querySelector('.value').textContent,
        width: li.querySelector('.fill').getBoundingClientRect().width
               / li.querySelector('.bar').getBoundingClientRect().width,
    }))""")


def test_choosing_a_file_shows_it_and_its_top5_as_labelled_bars(page, server, cat_jpeg, tmp_path):
    name, data = cat_jpeg
    path = tmp_path / name
    path.write_bytes(data)
    expect(page.locator("#model option")).to_have_count(2)
    assert page.input_value("#model") == "dwsep" and page.input_value("#topk") == "5"
    page.set_input_files("#file", str(path))
    expect(page.locator("#results li")).to_have_count(5)
    expected = api_answer(server, name, data)
    bars = shown_bars(page)
    assert [bar["label"] for bar in bars] == [p["label"] for p in expected]
    for bar, prediction in zip(bars, expected, strict=True):
        assert bar["value"] == f"{prediction['probability'] * 100:.1f}%"
        assert abs(bar["width"] - prediction["probability"]) < 0.01
    # the chosen image itself is shown
    assert page.is_visible("#preview")
    assert page.eval_on_selector("#preview", "img => img.complete && img.naturalWidth") == 32
    assert page.is_hidden("#error")


def test_dropping_an_image_and_changing_model_and_topk(page, server, cat_jpeg):
    name, data = cat_jpeg
    expect(page.locator("#model option")).to_have_count(2)
    page.evaluate("""([name, b64]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: 'image/jpeg'}));
        const zone = document.getElementById('drop');
        for (const type of ['dragenter', 'dragover', 'drop']) {
            zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }
    }""", [name, base64.b64encode(data).decode()])
    expect(page.locator("#results li")).to_have_count(5)
    assert page.text_content("#drop-text") == name
    page.select_option("#model", "tutorial")
    page.select_option("#topk", "3")
    expect(page.locator("#results li")).to_have_count(3)
    expect(page.locator("#status")).to_have_text(re.compile(r"^tutorial: "))
    expected = api_answer(server, name, data, topk=3, model="tutorial")
    assert [bar["label"] for bar in shown_bars(page)] == [p["label"] for p in expected]


def test_a_file_that_is_not_an_image_shows_the_error(page, tmp_path, failed_requests):
    path = tmp_path / "notes.png"
    path.write_text("shopping list: milk, eggs\n" * 10)
    page.set_input_files("#file", str(path))
    expect(page.locator("#error")).to_be_visible()
    assert "not an image" in page.text_content("#error")
    assert page.eval_on_selector_all("#results li", "items => items.length") == 0
    assert failed_requests == ["400 /predict?topk=5&model=dwsep"]
    failed_requests.clear()
