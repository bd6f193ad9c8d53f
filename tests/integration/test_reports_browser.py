"""Every report rendered by a real browser (headless Chromium): it loads without console errors, shows its charts,
each chart inside its panel and no two labels over each other, at a desktop and at a phone width."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.unit.test_report_charts import monitor_page, validation_page

# Measured in the page by the browser's own layout; written into #result for --dump-dom to carry out.
PROBE = """
const out = {};
for (const frame of document.querySelectorAll('iframe')) {
  const doc = frame.contentDocument, problems = [];
  const width = doc.documentElement.clientWidth;
  const svgs = [...doc.querySelectorAll('svg')];
  for (const svg of svgs) {
    const r = svg.getBoundingClientRect(), label = svg.getAttribute('aria-label');
    const panel = (svg.closest('.card') || doc.body).getBoundingClientRect();
    if (r.left < panel.left - 0.5 || r.right > panel.right + 0.5) problems.push(`${label}: outside its panel`);
    if (r.right > width + 0.5) problems.push(`${label}: past the page width`);
    const texts = [...svg.querySelectorAll('text')].filter(t => !t.getAttribute('transform'))
      .map(t => [t.textContent, t.getBoundingClientRect()]);
    for (let i = 0; i < texts.length; i++) for (let j = i + 1; j < texts.length; j++) {
      const [a, ra] = texts[i], [b, rb] = texts[j];
      if (Math.min(ra.right, rb.right) - Math.max(ra.left, rb.left) > 0.5 &&
          Math.min(ra.bottom, rb.bottom) - Math.max(ra.top, rb.top) > 0.5) problems.push(`${label}: ${a} over ${b}`);
    }
  }
  out[frame.id] = {problems, charts: svgs.length,
                   marks: svgs.map(s => s.querySelectorAll('polyline,path,rect,circle').length)};
}
document.getElementById('result').textContent = JSON.stringify(out);
"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: `make system-deps` (Debian package chromium) installs it")
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    pages = {"monitor": monitor_page(), "validation": validation_page()}
    frames = []
    for name, html in pages.items():
        (root / f"{name}.html").write_text(html)
        frames += [f'<iframe id="{name}-{w}" src="{name}.html" style="width:{w}px;height:900px"></iframe>'
                   for w in (1100, 380)]
    # The charts as they were (a fixed width) in a narrower panel: what the probe must catch.
    (root / "old.html").write_text('<!DOCTYPE html><html><body><div class="card" style="width:380px"><svg width="560" '
                                   'height="100" aria-label="old"><rect width="9" height="9"/></svg></div></body></html>')
    frames.append('<iframe id="old" src="old.html" style="width:600px"></iframe>')
    (root / "probe.html").write_text(
        f'<!DOCTYPE html><html><body>{"".join(frames)}<pre id="result"></pre>'
        f'<script>window.addEventListener("load", () => {{{PROBE}}});</script></body></html>')
    proc = subprocess.run(
        [_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--allow-file-access-from-files",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--window-size=1600,1000",
         "--dump-dom", (root / "probe.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, flags=re.S)
    assert result and result[1], f"the probe did not run: {proc.stdout[-2000:]}"
    return json.loads(result[1].replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")), proc.stderr


def test_reports_load_without_console_errors(rendered):
    _, log = rendered
    console = [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, console


@pytest.mark.parametrize("frame", ["monitor-1100", "monitor-380", "validation-1100", "validation-380"])
def test_each_report_shows_its_charts_inside_their_panels_without_overlapping_labels(rendered, frame):
    pages, _ = rendered
    page = pages[frame]
    expected = {"monitor": 6, "validation": 4}[frame.split("-")[0]]  # 2 drift + 3 over time + weights; 4 features
    assert page["charts"] == expected and all(n > 0 for n in page["marks"]), page
    assert page["problems"] == [], page["problems"][:10]  # (a wide table may scroll on a phone; a chart never)


def test_the_probe_sees_a_chart_that_leaves_its_panel(rendered):
    # The old charts (fixed 560 px wide) in a 380 px panel, rendered beside the reports: the check catches it.
    pages, _ = rendered
    assert pages["old"]["problems"] == ["old: outside its panel"]
