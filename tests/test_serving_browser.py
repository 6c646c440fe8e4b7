"""The web page in a real browser: Debian's Chromium, headless, driven by Playwright, against gunicorn.

Skips (saying why) only when Playwright or a Chromium binary cannot be found; ``.ci/run`` installs
Chromium. Set CHROMIUM to use another binary. Every page must load and run without a console error or
an uncaught script error. With PAGE_SCREENSHOT=path the page as the README shows it (the repository's
own weights, 1200x900, after an upload) is saved there (``docs/page.png``).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import requests
from PIL import Image
from test_serving_support import (
    WEIGHTS,
    Gunicorn,
    cifar_jpegs,
    file_sha256,
    shipped_models,
    with_metadata,
    write_manifest,
)

from common import images

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
DESKTOP = {"viewport": {"width": 1200, "height": 900}}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 3, "is_mobile": True, "has_touch": True}
TWIN = "\u2003\u21b3 "  # how the page indents a name's other file (NAME-fp32) under it


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
FIGURES = {"dwsep": {"cpu_images_per_s": 3407.9, "parameters": 204858},
           "dwsep.int8": {"cpu_images_per_s": 7054.3, "single_images_per_s": 3401.2},
           "tutorial": {"cpu_images_per_s": 67362.2, "parameters": 62006}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The repository's trained tutorial (with flip TTA in its metadata), dwsep and dwsep's int8 copy (served as
    dwsep, the fp32 file as dwsep-fp32), a manifest with their figures, and a copy of tutorial under ODD_NAME
    that the manifest does not describe."""
    weights = shipped_models(tmp_path_factory.mktemp("browser-weights"))
    shutil.copy(WEIGHTS / "dwsep.int8.onnx", weights / "dwsep.int8.onnx")
    with_metadata(weights / "tutorial.onnx", weights / "tutorial.onnx", tta="flip")
    shutil.copy(weights / "tutorial.onnx", weights / f"{ODD_NAME}.onnx")
    int8 = {"onnx": "dwsep.int8.onnx", "onnx_sha256": file_sha256(weights / "dwsep.int8.onnx"), **FIGURES["dwsep.int8"]}
    write_manifest(weights, "dwsep", dwsep={**FIGURES["dwsep"], "int8": int8}, tutorial=FIGURES["tutorial"])
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


class Problems:
    """What a page must not produce: console errors, uncaught script errors, answers of 400 or more."""

    def __init__(self, page, url: str):
        self.console: list[str] = []
        self.script: list[str] = []
        self.failed: list[str] = []  # "STATUS PATH"
        page.on("console", lambda m: self.console.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.script.append(str(exc)))
        page.on("response", lambda r: self.failed.append(f"{r.status} {r.url.removeprefix(url)}")
                if r.status >= 400 else None)

    def expected_failure(self, failure: str) -> None:
        """The one failed request a test provoked, and the console error Chromium logs for it."""
        assert self.failed == [failure]
        assert len(self.console) == 1 and "status of 400" in self.console[0], self.console
        self.failed.clear()
        self.console.clear()

    def assert_none(self) -> None:
        assert (self.console, self.script, self.failed) == ([], [], [])


def open_page(browser, url: str, **context_options):
    """A fresh page on ``url``/ (models listed), and the Problems it runs into. Close its context after."""
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=30_000)
    context = browser.new_context(**context_options)
    page = context.new_page()
    page.set_default_timeout(30_000)
    problems = Problems(page, url)
    page.goto(url + "/")
    return context, page, problems


@pytest.fixture()
def opened(browser, server):
    context, page, problems = open_page(browser, server.url, **DESKTOP)
    yield page, problems
    try:
        problems.assert_none()
    finally:
        context.close()


@pytest.fixture()
def page(opened):
    return opened[0]


def models_listed(page) -> None:
    expect(page.locator("#model option")).not_to_have_count(0)


@pytest.fixture(scope="module")
def cat_jpeg(data_archive) -> tuple[str, bytes]:
    _, name, data = cifar_jpegs(data_archive)[3]
    return name, data


@pytest.fixture(scope="module")
def wide_cat(cat_jpeg) -> tuple[str, bytes]:
    """The cat enlarged to 150x96: the service crops its centre square and shrinks it, so what the model saw
    is not simply the upload."""
    out = io.BytesIO()
    Image.open(io.BytesIO(cat_jpeg[1])).convert("RGB").resize((150, 96), Image.Resampling.BICUBIC).save(out, "PNG")
    return "wide-cat.png", out.getvalue()


def api_answer(url: str, name: str, data: bytes, topk: int = 5, model: str | None = None) -> list[dict]:
    query = {"topk": topk, **({"model": model} if model else {})}
    response = requests.post(url + "/predict", params=query, files={"img": (name, data)}, timeout=30)
    return response.json()["predictions"]


def shown_bars(page) -> list[dict]:
    return page.eval_on_selector_all("#results li", """items => items.map(li => ({
        label: li.querySelector('.label').textContent,
        value: li.querySelector('.value').textContent,
        width: li.querySelector('.fill').getBoundingClientRect().width
               / li.querySelector('.bar').getBoundingClientRect().width,
    }))""")


def model_input_pixels(page) -> np.ndarray:
    """The image shown as what the model saw, decoded from the page's own img element."""
    src = page.get_attribute("#model-input", "src")
    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))


def box(page, selector: str) -> dict:
    return page.eval_on_selector(selector, "e => { const r = e.getBoundingClientRect(); "
                                           "return {left: r.left, top: r.top, right: r.right, bottom: r.bottom}; }")


def assert_answer_shown(page, url: str, name: str, data: bytes, topk: int = 5, model: str | None = None) -> None:
    """The top-k bars equal the API's answer, beside the enlarged, pixelated 32x32 image the service decoded."""
    expect(page.locator("#results li")).to_have_count(topk)
    expected = api_answer(url, name, data, topk, model)
    bars = shown_bars(page)
    assert [bar["label"] for bar in bars] == [p["label"] for p in expected]
    for bar, prediction in zip(bars, expected, strict=True):
        assert bar["value"] == percent(prediction["probability"])
        assert abs(bar["width"] - prediction["probability"]) < 0.01
    expect(page.locator("#model-input")).to_be_visible()
    assert page.eval_on_selector("#model-input", "img => img.complete && img.naturalWidth") == 32
    assert np.array_equal(model_input_pixels(page), images.decode(data, 64_000_000))
    assert page.eval_on_selector("#model-input", "img => getComputedStyle(img).imageRendering") == "pixelated"
    seen, bars_box = box(page, "#model-input"), box(page, "#results")
    assert seen["right"] - seen["left"] >= 3 * 32  # enlarged
    assert seen["right"] <= bars_box["left"] and seen["top"] < bars_box["bottom"] and bars_box["top"] < seen["bottom"]


def test_choosing_a_file_shows_what_the_model_saw_beside_its_top5(page, server, wide_cat, tmp_path):
    name, data = wide_cat
    path = tmp_path / name
    path.write_bytes(data)
    models_listed(page)
    assert page.input_value("#model") == "dwsep" and page.input_value("#topk") == "5"
    with page.expect_request(lambda r: r.url.startswith(server.url + "/predict")) as sent:
        page.set_input_files("#file", str(path))
    assert parse_qs(urlsplit(sent.value.url).query)["include_input"] == ["true"]
    assert_answer_shown(page, server.url, name, data)
    # the chosen image itself is shown in the drop zone, and the model's 32x32 is not a copy of it
    assert page.is_visible("#preview")
    assert page.eval_on_selector("#preview", "img => img.complete && img.naturalWidth") == 150
    assert page.is_hidden("#error")


def test_dropping_an_image_and_changing_model_and_topk(page, server, cat_jpeg):
    name, data = cat_jpeg
    models_listed(page)
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
    assert_answer_shown(page, server.url, name, data, topk=3, model="tutorial")


def test_a_file_that_is_not_an_image_shows_the_error(opened, tmp_path):
    page, problems = opened
    path = tmp_path / "notes.png"
    path.write_text("shopping list: milk, eggs\n" * 10)
    models_listed(page)
    page.set_input_files("#file", str(path))
    expect(page.locator("#error")).to_be_visible()
    assert "not an image" in page.text_content("#error")
    assert page.eval_on_selector_all("#results li", "items => items.length") == 0
    assert page.is_hidden("#answer")
    problems.expected_failure("400 /predict?topk=5&include_input=true&model=dwsep")


def as_js(value: float, places: int) -> str:
    """``value`` rounded as the page's JavaScript rounds (toFixed, Intl): the float's exact value, ties up."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def percent(fraction: float) -> str:
    return as_js(fraction * 100, 1) + "%"


def speed(value: float | None) -> str:
    return "speed \u2014" if value is None else f"{int(as_js(value, 0)):,} img/s"


def shown_options(page) -> list[dict]:
    return page.eval_on_selector_all("#model option", "options => options.map(o => "
                                                      "({value: o.value, text: o.textContent, selected: o.selected}))")


def assert_options_tell_the_figures(options: list[dict], listed: dict[str, dict]) -> None:
    """One option per served name with that file's accuracy and speed as /models gives them; most accurate
    first; NAME-fp32 indented right under NAME; the default preselected."""
    assert sorted(o["value"] for o in options) == sorted(listed)
    values = [o["value"] for o in options]
    twins = {v for v in values if re.fullmatch(r".+-(fp32|int8)", v) and v.rsplit("-", 1)[0] in listed}
    for option in options:
        m = listed[option["value"]]
        accuracy = "accuracy \u2014" if m["test_accuracy"] is None else percent(m["test_accuracy"])
        indent = TWIN if option["value"] in twins else ""
        assert option["text"] == (f"{indent}{m['name']} \u00b7 {accuracy} \u00b7 {speed(m['cpu_images_per_s'])}"
                                  + (" (default)" if m["default"] else ""))
        assert option["selected"] == m["default"]
    for twin in twins:
        assert values.index(twin) == values.index(twin.rsplit("-", 1)[0]) + 1
    names = [v for v in values if v not in twins]
    assert names == sorted(names, key=lambda n: (-(listed[n]["test_accuracy"] or -1), n))


def test_the_model_choice_is_a_compact_list_by_accuracy_with_each_files_figures(page, server, cat_jpeg):
    listed = {m["name"]: m for m in requests.get(server.url + "/models", timeout=10).json()["models"]}
    assert sorted(listed) == sorted(["dwsep", "dwsep-fp32", "tutorial", ODD_NAME])
    expect(page.locator("#model option")).to_have_count(4)
    options = shown_options(page)
    assert_options_tell_the_figures(options, listed)
    assert [o["value"] for o in options][:2] == ["dwsep", "dwsep-fp32"]  # the most accurate, its fp32 file under it
    # the int8 file's figures, not its fp32 original's; a file the manifest does not describe has no speed
    assert options[0]["text"].endswith("7,054 img/s (default)") and options[1]["text"].endswith("3,408 img/s")
    assert {o["value"]: o["text"] for o in options}[ODD_NAME].endswith("speed \u2014")
    expect(page.locator("#model-info")).to_contain_text("dwsep: ")
    expect(page.locator("#model-info")).to_contain_text("7,054 images/s on CPU in batches of 64, 3,401 one at a time")
    expect(page.locator("#model-info")).to_contain_text("int8")
    page.select_option("#model", "tutorial")
    expect(page.locator("#model-info")).to_contain_text("test-time augmentation: flip")
    # the next image goes to the chosen model
    name, data = cat_jpeg
    with page.expect_request(lambda r: r.url.startswith(server.url + "/predict")) as sent:
        page.set_input_files("#file", files=[{"name": name, "mimeType": "image/jpeg", "buffer": data}])
    assert parse_qs(urlsplit(sent.value.url).query)["model"] == ["tutorial"]
    expected = api_answer(server.url, name, data, model="tutorial")
    expect(page.locator("#status")).to_have_text(f"tutorial: {expected[0]['label']}")
    assert [bar["label"] for bar in shown_bars(page)] == [p["label"] for p in expected]


def test_a_model_name_that_looks_like_markup_is_shown_as_text_and_sent_intact(page, server, cat_jpeg):
    models_listed(page)
    assert page.locator("#controls img").count() == 0
    assert sum(o["text"].startswith(ODD_NAME + " \u00b7 ") for o in shown_options(page)) == 1
    page.select_option("#model", ODD_NAME)
    name, data = cat_jpeg
    page.set_input_files("#file", files=[{"name": name, "mimeType": "image/jpeg", "buffer": data}])
    expected = api_answer(server.url, name, data, model=ODD_NAME)
    expect(page.locator("#status")).to_have_text(f"{ODD_NAME}: {expected[0]['label']}")
    assert page.title() == "CIFAR-10 classifier"


@pytest.mark.parametrize("device", [DESKTOP, PHONE], ids=["1200x900", "phone-390x844"])
def test_the_drop_zone_is_the_first_thing_in_view(browser, server, cat_jpeg, device, tmp_path):
    context, page, problems = open_page(browser, server.url, **device)
    try:
        models_listed(page)
        expect(page.locator("#model-info")).to_contain_text("dwsep: ")  # the page as it settles
        width, height = device["viewport"]["width"], device["viewport"]["height"]
        drop = box(page, "#drop")
        assert 0 <= drop["left"] < drop["right"] <= width and 0 <= drop["top"] < drop["bottom"] <= height, drop
        assert drop["bottom"] - drop["top"] >= 100  # a target, not a sliver
        # it comes before the model choice, and only the title and one line of text are above it
        assert drop["bottom"] <= box(page, "#controls")["top"]
        assert drop["top"] <= 0.25 * height
        assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing wider than the screen
        # the model choice is one compact control, in view too
        controls = box(page, "#controls")
        assert controls["bottom"] <= height and controls["bottom"] - controls["top"] <= 0.3 * height
        name, data = cat_jpeg
        page.set_input_files("#file", files=[{"name": name, "mimeType": "image/jpeg", "buffer": data}])
        assert_answer_shown(page, server.url, name, data)
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.screenshot(path=str(tmp_path / "page.png"))
        problems.assert_none()
    finally:
        context.close()


def test_keyboard_only_tab_to_the_file_control_open_it_choose_a_model_and_topk(opened, server, cat_jpeg, tmp_path):
    page, _ = opened
    name, data = cat_jpeg
    path = tmp_path / name
    path.write_bytes(data)
    models_listed(page)
    page.keyboard.press("Tab")  # the first stop: the file control inside the drop zone
    assert page.evaluate("document.activeElement.id") == "file"
    assert page.eval_on_selector("#drop", "zone => zone.matches(':focus-within')")
    assert page.eval_on_selector("#drop", "zone => getComputedStyle(zone).outlineStyle") != "none"  # focus shows
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(2):  # a loaded machine sometimes loses the first key press; a second must open it
        try:
            with page.expect_file_chooser(timeout=15_000) as chooser:
                page.keyboard.press("Enter")
            break
        except PlaywrightTimeout:
            assert attempt == 0, "Enter on the focused file control opened no file chooser, twice"
            assert page.evaluate("document.activeElement.id") == "file"
    chooser.value.set_files(str(path))
    assert_answer_shown(page, server.url, name, data)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "model"
    page.keyboard.press("ArrowDown")  # from dwsep to the next entry, its fp32 file
    assert page.input_value("#model") == "dwsep-fp32"
    expect(page.locator("#status")).to_have_text(re.compile(r"^dwsep-fp32: "))
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "topk"
    page.keyboard.press("ArrowUp")
    assert page.input_value("#topk") == "4"
    expect(page.locator("#results li")).to_have_count(4)
    assert_answer_shown(page, server.url, name, data, topk=4, model="dwsep-fp32")


def test_with_api_token_set_the_page_asks_for_it_and_then_lists_and_classifies(browser, cat_jpeg, tmp_path):
    token = "page-test-token-0123456789"
    service = Gunicorn(tmp_path / "gunicorn.log", MODELS_DIR=str(shipped_models(tmp_path / "weights")),
                       WORKERS="1", API_TOKEN=token).start()
    context = None
    try:
        service.wait_ready()
        context, page, problems = open_page(browser, service.url, **DESKTOP)
        # no token yet: the page says so instead of showing an empty model list
        expect(page.locator("#token")).to_be_visible()
        expect(page.locator("#error")).to_have_text("this service needs an API token")
        expect(page.locator("#model-info")).to_have_text("Enter the API token to list the models.")
        assert box(page, "#drop")["bottom"] <= DESKTOP["viewport"]["height"]  # still in view, with the token field
        page.fill("#token", "wrong")
        page.press("#token", "Enter")
        expect(page.locator("#error")).to_have_text("the API token was not accepted")
        page.fill("#token", token)
        page.press("#token", "Enter")
        expect(page.locator("#model option")).to_have_count(len(list((tmp_path / "weights").glob("*.onnx"))))
        expect(page.locator("#error")).to_be_hidden()
        name, data = cat_jpeg
        with page.expect_request(lambda r: r.url.startswith(service.url + "/predict")) as sent:
            page.set_input_files("#file", files=[{"name": name, "mimeType": "image/jpeg", "buffer": data}])
        assert sent.value.headers["authorization"] == f"Bearer {token}"
        expect(page.locator("#results li")).to_have_count(5)
        expect(page.locator("#model-input")).to_be_visible()
        # the token is kept for this tab, not put in the URL
        page.reload()
        models_listed(page)
        assert token not in page.url and problems.script == []
        # the 401s before the token was given are the only failures
        assert problems.failed and {f.split()[0] for f in problems.failed} == {"401"}
    finally:
        if context is not None:
            context.close()
        service.stop()


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory):
    """The service on the repository's own weights/ and MANIFEST.json, as `make serve` runs it."""
    service = Gunicorn(tmp_path_factory.mktemp("gunicorn-shipped") / "gunicorn.log", MODELS_DIR=str(WEIGHTS),
                       WORKERS="1")
    service.start()
    try:
        yield service.wait_ready(timeout=300)  # twenty models to load and warm up, on a machine perhaps busy
    finally:
        service.stop()


def test_the_shipped_models_page_shows_each_files_own_figures(browser, shipped_server, wide_cat, tmp_path):
    """On the real weights: every entry's accuracy is the manifest's figure for the file served under that name
    (an int8 file's own, not its fp32 original's). The screenshot of this page is the README's."""
    manifest = json.loads((WEIGHTS / "MANIFEST.json").read_text())
    measured = {}  # sha256 -> the manifest's figures for that file
    for entry in manifest["models"].values():
        measured[entry["onnx_sha256"]] = entry
        if isinstance(entry.get("int8"), dict) and entry["int8"].get("onnx_sha256"):
            measured[entry["int8"]["onnx_sha256"]] = entry["int8"]
    listed = {m["name"]: m for m in requests.get(shipped_server.url + "/models", timeout=10).json()["models"]}
    context, page, problems = open_page(browser, shipped_server.url, **DESKTOP)
    try:
        expect(page.locator("#model option")).to_have_count(len(listed))
        options = shown_options(page)
        assert_options_tell_the_figures(options, listed)
        for option in options:
            figures = measured[listed[option["value"]]["sha256"]]
            assert f" \u00b7 {percent(figures['test_accuracy'])} \u00b7 " in option["text"], option
            assert f" \u00b7 {speed(figures['cpu_images_per_s'])}" in option["text"], option
        name, data = wide_cat
        page.set_input_files("#file", files=[{"name": name, "mimeType": "image/png", "buffer": data}])
        assert_answer_shown(page, shipped_server.url, name, data)
        # the first 1200x900 view, down to the footer: all of it fits
        target = Path(os.environ.get("PAGE_SCREENSHOT") or tmp_path / "page.png")
        width, height = DESKTOP["viewport"]["width"], math.ceil(box(page, "footer")["bottom"]) + 16
        assert height <= DESKTOP["viewport"]["height"]
        page.screenshot(path=str(target), clip={"x": 0, "y": 0, "width": width, "height": height})
        assert Image.open(target).size == (width, height)
        problems.assert_none()
    finally:
        context.close()
