"""The review page in a real browser (Debian's chromium driven by Playwright) against a real server."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import httpx
import pytest

from icdcoder.serving.app import create_app
from icdcoder.serving.server import warm_pipeline
from icdcoder.serving.settings import ServeSettings
from tests.serving_helpers import running

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
TOKEN = "page-token-0123456789abcdef"
MARK_RGB = (0xFF, 0xD5, 0x4A)  # --mark in review.css
VIEWPORT = {"width": 1280, "height": 900}

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    with running(create_app(warm_pipeline(tiny_model_dir), ServeSettings(token=TOKEN))) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, base):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    pg = context.new_page()
    errors: list[str] = []  # API errors (401, 404 for an unknown code) are part of the tests; others are not
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text)
          if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    pg.on("response", lambda r: errors.append(f"{r.status} {r.url}")
          if r.status >= 400 and "/v1/" not in r.url else None)
    pg.goto(base + "/")
    pg.wait_for_selector("body[data-ready=true]")
    yield pg
    context.close()
    assert not errors, errors  # no script error, no CSP violation


def _code_through_page(page, text: str, note_id: str = "case-7") -> None:
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_label("Note id").fill(note_id)
    page.get_by_label("Note text").fill(text)
    page.get_by_role("button", name="Code note").click()
    page.wait_for_selector("#results:not([hidden])")


def _api_result(base: str, text: str) -> dict:
    r = httpx.post(f"{base}/v1/code", json={"text": text, "id": "case-7"},
                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def _disjoint(evidence: list[dict]) -> bool:
    spans = sorted((e["start"], e["end"]) for e in evidence)
    return all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def _png_pixels(png: bytes):
    """(width, height) and an (n, 3) array of RGB pixels."""
    import numpy as np
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    return img.size, np.asarray(img).reshape(-1, 3)


def test_review_a_note_end_to_end(page, base, small_synth):
    text = "Émigré patient 🙂 seen in clínica 👩‍⚕️.\n" + small_synth["test"][3].text
    assert page.get_by_label("API token").is_visible()  # the server said a token is needed
    _code_through_page(page, text)
    api = _api_result(base, text)
    suggested = [c for c in api["codes"] if c["suggested"]]
    assert page.locator("#suggested .code").all_inner_texts() == [c["code"] for c in suggested]
    assert page.locator("#candidates .code").count() == len(api["codes"]) - len(suggested)

    # select a code: its evidence, and only its evidence, is marked, and scrolled into view
    target = next(c for c in suggested if c["evidence"] and _disjoint(c["evidence"]))
    item = page.locator("#suggested li").filter(has=page.locator(".code", has_text=target["code"]))
    item.locator(".code-select").click()
    marks = page.locator("#note-view mark")
    expected = [e["text"] for e in sorted(target["evidence"], key=lambda e: e["start"])]
    assert marks.all_inner_texts() == expected
    sync_api.expect(marks.first).to_be_in_viewport()
    assert page.locator("#note-view").inner_text() == text  # the whole note is there, highlight or not

    # the keyboard selects too
    other = next((c for c in suggested if c is not target and c["evidence"] and _disjoint(c["evidence"])), None)
    if other is not None:
        page.locator("#suggested li").filter(has=page.locator(".code", has_text=other["code"])).locator(
            ".code-select").focus()
        page.keyboard.press("Enter")
        assert marks.all_inner_texts() == [e["text"] for e in sorted(other["evidence"], key=lambda e: e["start"])]

    # reject one suggested code
    rejected = suggested[-1]["code"]
    page.get_by_role("button", name=f"Reject {rejected}", exact=True).click()
    assert page.locator("#suggested li").filter(
        has=page.locator(".code", has_text=rejected)).get_attribute("data-decision") == "rejected"

    # add a valid code in a loose spelling, then an unknown one
    present = {c["code"] for c in api["codes"]}
    added = next(c for c in ("K21.9", "M54.50", "H52.4", "L40.0") if c not in present)
    page.get_by_label("Add a code").fill(added.lower().replace(".", ""))
    page.get_by_role("button", name="Add", exact=True).click()
    sync_api.expect(page.locator("#added .code")).to_have_text([added])
    description = httpx.get(f"{base}/v1/codes/{added}", headers={"Authorization": f"Bearer {TOKEN}"}).json()[
        "description"]
    assert page.locator("#added .desc").inner_text() == description
    page.get_by_label("Add a code").fill("XQ99.77")
    page.get_by_role("button", name="Add", exact=True).click()
    sync_api.expect(page.locator("#add-message")).to_contain_text("'XQ99.77' is not a code")
    assert "error" in page.locator("#add-message").get_attribute("class")
    assert page.locator("#added .code").count() == 1

    # export: accepted suggestions (not the rejected one) plus the added code
    final = [c["code"] for c in suggested if c["code"] != rejected] + [added]
    with page.expect_download() as dl:
        page.get_by_role("button", name="Export JSON").click()
    assert dl.value.suggested_filename == "case-7-codes.json"
    doc = json.loads(Path(dl.value.path()).read_text(encoding="utf-8"))
    assert doc["note_id"] == "case-7" and [c["code"] for c in doc["codes"]] == final
    assert doc["codes"][-1] == {"code": added, "system": "icd10cm", "description": description, "source": "added",
                                "score": None}
    with page.expect_download() as dl:
        page.get_by_role("button", name="Export CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text(encoding="utf-8"))))
    assert [r["code"] for r in rows] == final and rows[-1]["description"] == description
    assert {r["source"] for r in rows[:-1]} == {"suggested"}

    # the screenshot shows the page with the highlight in it
    item.locator(".code-select").click()
    size, pixels = _png_pixels(page.screenshot())
    assert size == (VIEWPORT["width"], VIEWPORT["height"])
    assert len({tuple(p) for p in pixels[::7]}) > 50, "the page looks blank"
    assert (pixels == MARK_RGB).all(axis=1).sum() > 200, "no evidence highlight visible"


def test_page_reports_a_missing_token(page):
    page.get_by_label("Note text").fill("Type 2 diabetes mellitus.")
    page.get_by_role("button", name="Code note").click()
    sync_api.expect(page.locator("#status")).to_contain_text("enter the API token")
    assert page.locator("#results").is_hidden()


def test_api_docs_render_offline(browser, base):
    """/docs loads Swagger UI from the fastapi-offline package, not a CDN (no network here)."""
    pytest.importorskip("fastapi_offline", reason="fastapi-offline is not installed (the serve extra)")
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    outside: list[str] = []
    pg.on("request", lambda r: outside.append(r.url) if not r.url.startswith(base) else None)
    pg.goto(base + "/docs")
    pg.get_by_text("/v1/code", exact=True).first.wait_for(timeout=15000)
    assert pg.get_by_text("/v1/codes/{code}", exact=True).count() >= 1
    context.close()
    assert not outside, outside
