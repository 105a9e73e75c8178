"""Open an `rlp view` page in a real headless browser (Debian's chromium, driven by Playwright),
walk its step selector, take a screenshot and print what it saw as JSON: console errors, the
steps the selector offers, the steps shown after pressing next/previous, the curves drawn (canvas
pixels that are not blank) and the screenshot's path. The tests run it; the README's screenshot
comes from it.

    python scripts/view_screenshot.py runs/demo/view.html docs/view.png [--width 1280 --height 1400]
        [--fragment 'colour=advantage&curves=reward/total/mean,eval/accuracy,policy/kl_ref']
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")

# Per canvas: how many pixels hold any paint (Chart.js draws on a transparent canvas).
PAINTED_PIXELS = """() => Array.from(document.querySelectorAll('canvas')).map((c) => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; })"""


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def inspect_page(page_path: Path, screenshot: Path, width: int = 1280, height: int = 1400, fragment: str = "") -> dict:
    """Load the page (with `fragment`, the URL's #-part the page keeps its selection in), walk the
    step selector, screenshot the top of the page; returns what it saw."""
    from playwright.sync_api import sync_playwright

    browser_path = find_browser()
    if browser_path is None:
        raise SystemExit(f"no browser found (looked for {', '.join(BROWSERS)}): apt-get install chromium")
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
        page.goto(page_path.resolve().as_uri() + (f"#{fragment}" if fragment else ""), wait_until="load")
        page.wait_for_timeout(300)  # the charts draw synchronously (animation off); a margin for layout
        steps = page.eval_on_selector_all("#step-select option", "options => options.map(o => Number(o.value))")
        shown = [page.input_value("#step-select")]
        page.click("#prev-step")
        shown.append(page.input_value("#step-select"))
        page.click("#next-step")
        shown.append(page.input_value("#step-select"))
        seen = {
            "errors": errors, "title": page.title(), "steps": steps, "shown_steps": [int(s) if s else None for s in shown],
            "groups_shown": page.locator("#samples .group").count(),
            "coloured_tokens": page.locator("#samples span.t").count(),
            "curves": page.locator("#curves canvas").count(), "painted_pixels": page.evaluate(PAINTED_PIXELS),
        }
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(screenshot))
        browser.close()
    seen["screenshot"] = str(screenshot)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("screenshot", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1400)
    parser.add_argument("--fragment", default="", help="e.g. 'colour=advantage&curves=reward/total/mean,eval/accuracy'")
    args = parser.parse_args()
    print(json.dumps(inspect_page(args.page, args.screenshot, args.width, args.height, args.fragment)))


if __name__ == "__main__":
    main()
