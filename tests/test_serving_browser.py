"""The web page in a real browser: Debian's Chromium, headless, driven by Playwright, against gunicorn.

Skips (saying why) only when Playwright or a Chromium binary cannot be found; ``.ci/run`` installs
Chromium. Set CHROMIUM to use another binary.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from test_serving_support import Gunicorn, cifar_jpegs, shipped_models, with_metadata, write_manifest

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


# A model whose file name is markup: the page must show it as text and send it intact.
ODD_NAME = "<img src=x onerror=\"document.title='injected'\">"
FIGURES = {"dwsep": {"cpu_images_per_s": 7054.3, "parameters": 204858},
           "tutorial": {"cpu_images_per_s": 67362.2, "parameters": 62006}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The repository's trained tutorial (with flip TTA in its metadata) and dwsep, a manifest with their
    figures, and a copy of tutorial under ODD_NAME that the manifest does not describe."""
    weights = shipped_models(tmp_path_factory.mktemp("browser-weights"))
    with_metadata(weights / "tutorial.onnx", weights / "tutorial.onnx", tta="flip")
    shutil.copy(weights / "tutorial.onnx", weights / f"{ODD_NAME}.onnx")
    write_manifest(weights, "dwsep", **FIGURES)
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
    expect(page.locator("#model-rows tr")).to_have_count(3)
    assert page.input_value("#model-rows input:checked") == "dwsep" and page.input_value("#topk") == "5"
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
    expect(page.locator("#model-rows tr")).to_have_count(3)
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
    page.check("#model-rows input[value=tutorial]")
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


def shown_models(page) -> dict[str, dict]:
    rows = page.eval_on_selector_all("#model-rows tr", """rows => rows.map(tr => ({
        name: tr.querySelector('.name').textContent,
        value: tr.querySelector('input[name=model]').value,
        checked: tr.querySelector('input[name=model]').checked,
        figures: [...tr.querySelectorAll('td.num')].map(td => td.textContent),
        badges: [...tr.querySelectorAll('.badge')].map(b => b.textContent),
    }))""")
    return {row.pop("name"): row for row in rows}


def test_the_model_table_shows_accuracy_speed_and_tta_and_sends_the_chosen_model(page, server, cat_jpeg, tmp_path):
    listed = {m["name"]: m for m in requests.get(server.url + "/models", timeout=10).json()["models"]}
    expect(page.locator("#model-rows tr")).to_have_count(3)
    expect(page.locator("#models-note")).to_be_hidden()
    shown = shown_models(page)
    accuracy = {name: f"{m['test_accuracy'] * 100:.1f}%" for name, m in listed.items()}
    assert shown == {
        "dwsep": {"value": "dwsep", "checked": True, "figures": [accuracy["dwsep"], "7,054"], "badges": ["default"]},
        "tutorial": {"value": "tutorial", "checked": False, "figures": [accuracy["tutorial"], "67,362"],
                     "badges": ["TTA: flip"]},
        # no manifest entry for this file: its speed is unknown, its accuracy and TTA come from the file
        ODD_NAME: {"value": ODD_NAME, "checked": False, "figures": [accuracy[ODD_NAME], "\u2014"],
                   "badges": ["TTA: flip"]},
    }
    assert re.fullmatch(r"\d{2}\.\d%", accuracy["dwsep"])
    # a click anywhere on a row chooses its model; the next image goes to that model
    page.locator("#model-rows tr[data-model=tutorial] td.num").first.click()
    assert page.input_value("#model-rows input:checked") == "tutorial"
    name, data = cat_jpeg
    path = tmp_path / name
    path.write_bytes(data)
    with page.expect_request(lambda r: r.url.startswith(server.url + "/predict")) as sent:
        page.set_input_files("#file", str(path))
    assert parse_qs(urlsplit(sent.value.url).query)["model"] == ["tutorial"]
    expected = api_answer(server, name, data, model="tutorial")
    expect(page.locator("#status")).to_have_text(f"tutorial: {expected[0]['label']}")
    assert [bar["label"] for bar in shown_bars(page)] == [p["label"] for p in expected]


def test_a_model_name_that_looks_like_markup_is_shown_as_text_and_sent_intact(page, server, cat_jpeg):
    expect(page.locator("#model-rows tr")).to_have_count(3)
    assert page.locator("#controls img").count() == 0
    row = page.locator("#model-rows tr").filter(has_text=ODD_NAME)
    expect(row).to_have_count(1)
    row.locator("input").check()
    name, data = cat_jpeg
    page.set_input_files("#file", files=[{"name": name, "mimeType": "image/jpeg", "buffer": data}])
    expected = api_answer(server, name, data, model=ODD_NAME)
    expect(page.locator("#status")).to_have_text(f"{ODD_NAME}: {expected[0]['label']}")
    assert page.title() == "CIFAR-10 classifier"


def test_with_api_token_set_the_page_asks_for_it_and_then_lists_and_classifies(browser, cat_jpeg, tmp_path):
    from playwright.sync_api import expect as playwright_expect

    token = "page-test-token-0123456789"
    service = Gunicorn(tmp_path / "gunicorn.log", MODELS_DIR=str(shipped_models(tmp_path / "weights")),
                       WORKERS="1", API_TOKEN=token).start()
    context = browser.new_context()
    try:
        service.wait_ready()
        page = context.new_page()
        page.set_default_timeout(30_000)
        playwright_expect.set_options(timeout=30_000)
        script_errors: list[str] = []
        page.on("pageerror", lambda exc: script_errors.append(str(exc)))
        page.goto(service.url + "/")
        # no token yet: the page says so instead of showing an empty model list
        expect(page.locator("#token")).to_be_visible()
        expect(page.locator("#error")).to_have_text("this service needs an API token")
        expect(page.locator("#models-note")).to_have_text("Enter the API token to list the models.")
        page.fill("#token", "wrong")
        page.press("#token", "Enter")
        expect(page.locator("#error")).to_have_text("the API token was not accepted")
        page.fill("#token", token)
        page.press("#token", "Enter")
        expect(page.locator("#model-rows tr")).to_have_count(len(list((tmp_path / "weights").glob("*.onnx"))))
        expect(page.locator("#error")).to_be_hidden()
        name, data = cat_jpeg
        with page.expect_request(lambda r: r.url.startswith(service.url + "/predict")) as sent:
            page.set_input_files("#file", files=[{"name": name, "mimeType": "image/jpeg", "buffer": data}])
        assert sent.value.headers["authorization"] == f"Bearer {token}"
        expect(page.locator("#results li")).to_have_count(5)
        # the token is kept for this tab, not put in the URL
        page.reload()
        expect(page.locator("#model-rows tr")).not_to_have_count(0)
        assert token not in page.url and script_errors == []
    finally:
        context.close()
        service.stop()
