"""Headless Chromium for the report tests: find (or install) it and read back how each embedded image decoded."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_PROBE = """<script>window.addEventListener('load', function () {
  var out = Array.prototype.slice.call(document.images).map(function (i) {
    return {complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}; });
  var pre = document.createElement('pre'); pre.id = 'image-probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    subprocess.run(["bash", str(REPO / ".ci" / "install-chromium.sh")], check=False, timeout=900)
    path = shutil.which("chromium")
    if not path:
        reason = "Chromium is not installed and .ci/install-chromium.sh could not install it (see its output)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return path


def image_probe(chromium: str, page: Path, profile: Path) -> list[dict]:
    probe = page.with_name(page.stem + ".probe.html")
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    start = proc.stdout.find('<pre id="image-probe">')
    assert start >= 0, "the page's load handler never ran"
    body = proc.stdout[start + len('<pre id="image-probe">'):]
    return json.loads(body[: body.index("</pre>")].replace("&quot;", '"'))
