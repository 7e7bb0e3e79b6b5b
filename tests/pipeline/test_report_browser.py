"""The study report as a person sees it: study.html rendered by a real browser (headless Debian chromium).

The report is the synthetic study's (tests/report_study.py). The page is opened at 1400 px wide
with a small script appended that measures what the browser laid out (the report itself carries
no script): no raw Markdown link text, no table wider than the window, every figure decoded.
A full-page screenshot is kept at ``build/test-artifacts/report/study-1400.png`` (git-ignored) and
recorded as the test's ``screenshot`` property. chromium is installed on demand by
tests/pipeline/browser/chromium.sh; in CI (``CI=true``) a browser that cannot be had fails the test.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from anonbench.config import Config

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
WIDTH = 1400
ARTIFACTS = REPO / "build" / "test-artifacts" / "report"
# Appended to a copy of the page: measures the laid-out page once everything has loaded.
MEASURE = """<script>
window.addEventListener("load", () => {
  const root = document.documentElement;
  const box = (e) => e.getBoundingClientRect();
  const found = {
    viewport: root.clientWidth, scroll_width: root.scrollWidth, height: root.scrollHeight,
    raw_markdown_links: (document.body.innerText.match(/\\]\\(https?:/g) || []).length,
    tables: [...document.querySelectorAll("table")].map((t) => ({
      left: box(t).left, right: box(t).right, head: t.rows[0].innerText.slice(0, 80)})),
    figures: [...document.images].map((im) => ({
      loaded: im.complete && im.naturalWidth > 0, right: box(im).right, alt: im.alt.slice(0, 80)})),
    links: [...document.links].filter((a) => /^https?:/.test(a.getAttribute("href"))).length,
  };
  const out = document.createElement("pre");
  out.id = "anonbench-measured";
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
});
</script>"""


def measure(chromium: Callable[..., str], page: Path, folder: Path) -> dict[str, Any]:
    """Lay the page out at WIDTH px in chromium and read back what the browser measured."""
    probe = folder / "measured.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", f"{MEASURE}\n</body>"), encoding="utf-8")
    dom = chromium(f"--window-size={WIDTH},1000", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="anonbench-measured">(.*?)</pre>', dom, re.S)
    assert found, f"the measuring script did not run; chromium printed:\n{dom[-2000:]}"
    result: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return result


def test_study_html_reads_at_1400_px(
    built_report: tuple[Config, list[Path]], chromium: Callable[..., str], record_property: Callable[[str, Any], None]
) -> None:
    cfg, _ = built_report
    page = cfg.paths.reports / "study.html"
    found = measure(chromium, page, page.parent)
    assert found["viewport"] == WIDTH, "the page was laid out at the width asked for"
    assert found["raw_markdown_links"] == 0, "a link rendered as raw Markdown text"
    assert found["links"] > 50, "numbers link to their MLflow runs"
    assert len(found["tables"]) > 15
    wide = [t for t in found["tables"] if t["left"] < 0 or t["right"] > WIDTH]
    assert not wide, f"tables wider than the {WIDTH} px page: {wide}"
    assert found["scroll_width"] <= WIDTH, "the page scrolls sideways"
    figures = {p.name for p in (cfg.paths.reports / "figures").glob("*.png")}
    assert len(found["figures"]) == len(figures) >= 10
    assert all(f["loaded"] and f["right"] <= WIDTH for f in found["figures"]), found["figures"]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"study-{WIDTH}.png"
    shot.unlink(missing_ok=True)
    chromium(f"--window-size={WIDTH},{found['height']}", f"--screenshot={shot}", page.as_uri())
    record_property("screenshot", str(shot))
    with Image.open(shot) as image:
        assert image.size == (WIDTH, found["height"])
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10, "the screenshot shows a page, not a blank window"


def test_the_browser_check_sees_a_raw_link_and_a_wide_table(
    built_report: tuple[Config, list[Path]], chromium: Callable[..., str], tmp_path: Path
) -> None:
    """The measurement is not a check that cannot fail: a page with both faults is caught."""
    cfg, _ = built_report
    broken = tmp_path / "broken.html"
    text = (cfg.paths.reports / "study.html").read_text(encoding="utf-8")
    wide_table = "<table><tr>" + "<td>wide_cell_without_a_break_point</td>" * 60 + "</tr></table>"
    broken.write_text(text.replace("<body>", f"<body><p>[+1.2 [-0.3, +2.0]](http://x/#/runs/1)</p>{wide_table}"))
    found = measure(chromium, broken, tmp_path)
    assert found["raw_markdown_links"] == 1
    assert any(t["right"] > WIDTH for t in found["tables"]) and found["scroll_width"] > WIDTH
