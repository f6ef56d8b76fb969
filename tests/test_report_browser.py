"""report.html in a real headless browser (Debian's Chromium, which .ci/run installs): it loads
with no console error, every in-page link lands on an element, and the search box filters the
row tables. Driven by the browser's own headless mode: a wrapper page loads the report in a
frame, runs the checks and writes them into its DOM, which `--dump-dom` prints."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from _cli import run_cli
from fake_openai import FakeOpenAI, fake_recipe, pipeline_reply

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--allow-file-access-from-files", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=8000"]
WRAPPER = """<!doctype html><html><body><iframe id=f src="report.html" style="width:1200px;height:900px"></iframe><pre id=out>pending</pre>
<script>
document.getElementById('f').onload = function () {
  var d = document.getElementById('f').contentDocument;
  var links = Array.prototype.slice.call(d.querySelectorAll('a[href^="#"]'));
  var bad = links.filter(function (a) { return !d.getElementById(a.getAttribute('href').slice(1)); });
  var rows = function () { return Array.prototype.slice.call(d.querySelectorAll('table.rows tr[data-text]'))
    .filter(function (r) { return r.style.display !== 'none'; }).length; };
  var q = d.getElementById('q'), before = rows();
  q.value = 'zzzz-no-such-text'; q.dispatchEvent(new Event('input')); var none = rows();
  q.value = 'seed-'; q.dispatchEvent(new Event('input')); var some = rows();
  document.getElementById('out').textContent = JSON.stringify({links: links.length, bad: bad.length, before: before, none: none, some: some});
};
</script></body></html>"""


def test_report_html_in_headless_chromium(tmp_path):
    assert Path(CHROMIUM).exists(), "Chromium is needed (Debian: apt-get install chromium; .ci/run installs it)"
    with FakeOpenAI(responder=pipeline_reply) as fake:
        recipe = fake_recipe(tmp_path / "r.yaml", fake.api_base, seeds={"limit": 3, "holdout": None}, ask_me_anything={"limit": 2},
                             evolve={"limit": 2, "rounds": 1})
        run = tmp_path / "run"
        assert run_cli("run", recipe, "--run-dir", run).returncode == 0
    (run / "check.html").write_text(WRAPPER)
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", (run / "check.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="out">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stdout[-2000:] + proc.stderr[-2000:]
    got = json.loads(found.group(1).replace("&quot;", '"'))
    assert got["links"] > 0 and got["bad"] == 0, got
    assert got["before"] > 0 and got["none"] == 0 and 0 < got["some"] <= got["before"], got  # the search filters
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "Error" in line], console
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1200,1400", f"--screenshot={shot}",
                    (run / "report.html").as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
