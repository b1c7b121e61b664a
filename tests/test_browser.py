"""The viewer page in a real browser: Debian chromium, headless, driven by
Playwright against uvicorn on a free loopback port.

The predictor is faked (hemoseg.server.testing.FakePredictor) to return the
synthetic study's ground-truth labels, so the overlay must contain exactly the
generator's classes and the table must show its exact volumes.

HEMOSEG_UPDATE_SCREENSHOT=1 also copies the screenshot to docs/viewer.png.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "viewer.png"

# pixels on the overlay canvas that are drawn and clearly coloured (not grey)
COLOURED = """() => {
  const c = document.getElementById('overlay');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 0 && Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 40) n++;
  }
  return n;
}"""


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright (python) is not installed: pip install playwright")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"Debian chromium not found at {CHROMIUM} (apt-get install chromium)")
    pytest.importorskip("uvicorn")
    return sync_playwright


def test_viewer_upload_overlay_table(tmp_path):
    sync_playwright = _browser_or_skip()
    from hemoseg import RESEARCH_NOTICE
    from hemoseg.data.figures import class_colors
    from hemoseg.server.app import LOOPBACK_HOSTS, create_app
    from hemoseg.server.testing import (FakePredictor, ThreadedServer, synthetic_dicom_folder,
                                        synthetic_truth, zip_folder)

    folder = synthetic_dicom_folder(tmp_path / "synth", slices=24, size=256, seed=0)
    truth = json.loads((folder.parent / "ground_truth.json").read_text())[folder.name]
    labels = synthetic_truth(folder)
    upload = tmp_path / "study.zip"
    upload.write_bytes(zip_folder(folder))
    pred = FakePredictor(truths=[labels])
    present = {pred.class_names[k - 1] for k in np.unique(labels) if k}
    assert len(present) >= 2

    app = create_app(pred, work_dir=tmp_path / "work", allowed_hosts=LOOPBACK_HOSTS,
                     model_info={"run": "synthetic-ground-truth", "backend": "fake"})
    with ThreadedServer(app) as srv, sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as exc:  # e.g. missing shared libraries
            pytest.skip(f"chromium did not start: {' '.join(str(exc).split())[:200]}")
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
            page.goto(srv.url + "/")
            page.wait_for_function("document.querySelectorAll('#legend li').length > 0")
            notice = page.inner_text("#notice")
            assert "Research use only" in notice and RESEARCH_NOTICE.split(". ", 1)[1] in notice

            page.set_input_files("#file-input", str(upload))
            page.wait_for_selector("#status[data-state=done]", timeout=45_000)

            # overlay drawn in the shared palette, on the slice with the largest lesion
            assert page.evaluate(COLOURED) > 100
            rgb = page.evaluate("""() => {
              const c = document.getElementById('overlay');
              const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
              const s = new Set();
              for (let i = 0; i < d.length; i += 4) if (d[i + 3] === 255) s.add(`${d[i]},${d[i+1]},${d[i+2]}`);
              return [...s];
            }""")
            palette = {",".join(map(str, c)) for c in class_colors(len(pred.class_names))}
            assert rgb and set(rgb) <= palette

            # volume table: every class, exact ground-truth volumes for those present
            rows = page.locator("#volume-table tbody tr").all_inner_texts()
            assert len(rows) == len(pred.class_names)
            for name, row in zip(pred.class_names, rows):
                assert name in row
                if name in present:
                    assert f"{truth['volumes_ml'][name]:.2f} mL" in row
            assert "Research use only" in page.inner_text("#table-notice")
            for f in ("labels.nii.gz", "seg.dcm", "report.csv"):
                assert page.locator(f"#downloads a[data-file='{f}']").count() == 1

            shot = tmp_path / "viewer.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("HEMOSEG_UPDATE_SCREENSHOT"):
                shutil.copyfile(shot, DOCS_SCREENSHOT)

            # class toggles hide the overlay; opacity 0 clears it
            boxes = page.locator("#legend input[type=checkbox]")
            for i in range(boxes.count()):
                boxes.nth(i).uncheck()
            assert page.evaluate(COLOURED) == 0
            for i in range(boxes.count()):
                boxes.nth(i).check()
            assert page.evaluate(COLOURED) > 100

            # mouse wheel scrolls slices; presets set the window
            before = page.inner_text("#slice-out")
            page.hover("#viewport")
            page.mouse.wheel(0, 120)
            page.wait_for_function(f"document.getElementById('slice-out').textContent !== {before!r}")
            page.click("button[data-preset=bone]")
            assert "W 2800" in page.inner_text("#info-tr")
            assert "active" in page.get_attribute("button[data-preset=bone]", "class")
            page.fill("#slice", "0")
            page.dispatch_event("#slice", "input")
            page.wait_for_function("document.getElementById('slice-out').textContent.startsWith('1 /')")
            assert not problems, problems
        finally:
            browser.close()


def test_viewer_asks_which_series_of_a_flat_export(tmp_path):
    """A zip holding two series of one study: the page lists them, and a click on one
    segments that series."""
    sync_playwright = _browser_or_skip()
    from hemoseg.server.app import LOOPBACK_HOSTS, create_app
    from hemoseg.server.testing import (FakePredictor, ThreadedServer, flat_export_with_second_series,
                                        synthetic_dicom_folder, synthetic_truth, zip_folder)

    folder = synthetic_dicom_folder(tmp_path / "synth", slices=8, size=64, seed=0)
    flat = tmp_path / "flat"
    flat_export_with_second_series(folder, flat)
    upload = tmp_path / "export.zip"
    upload.write_bytes(zip_folder(flat))
    app = create_app(FakePredictor(truths=[synthetic_truth(folder)]), work_dir=tmp_path / "work",
                     allowed_hosts=LOOPBACK_HOSTS)
    with ThreadedServer(app) as srv, sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as exc:
            pytest.skip(f"chromium did not start: {' '.join(str(exc).split())[:200]}")
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(srv.url + "/")
            page.wait_for_function("document.querySelectorAll('#legend li').length > 0")
            page.set_input_files("#file-input", str(upload))
            page.wait_for_selector("#series-choice button", timeout=20_000)
            assert "holds 2 image series" in page.inner_text("#status")
            choices = page.locator("#series-choice button").all_inner_texts()
            assert len(choices) == 2 and "Series 7 \u2013 Axial bone (8 images)" in choices
            page.click("#series-choice button[data-series='7']")
            page.wait_for_selector("#status[data-state=done]", timeout=30_000)
            assert page.locator("#series-choice").is_hidden()
            warnings = page.inner_text("#warnings")
            assert "series 7 was segmented" in warnings
            assert not problems, problems
        finally:
            browser.close()
