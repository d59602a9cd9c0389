"""How long the fleet dashboard's page takes to redraw its table in a real browser
(issue 18's goal: the dashboard updating within 1 s at 1,000 vehicles).

The page is monitor/src/dashboard.html as the monitor serves it, with a synthetic snapshot
of N vehicles in the monitor's JSON shape (monitor/src/dashboard.rs `Snapshot`): 60 scores
each (fleet/src/view.rs SCORES_KEPT), a 160-px evidence thumbnail on 2% of them, a tenth
in OOD or FAULT, a few offline. A script appended to the page then times, for R redraws,
what one server-sent event costs the browser: JSON.parse of the event's text, then the
page's own draw() (the whole table rebuilt), then a forced style and layout
(document.body.offsetHeight). Painting is not included (headless Chromium paints off
screen). Each redraw gets another snapshot (scores moved), as live events do.

Usage: dashboard_redraw.py [N ...] [--redraws R] [--page FILE]   (default 1000 3200, R = 20)
Prints one JSON line per N: snapshot bytes, parse / draw+layout / total ms (median, max).
Needs Debian's chromium and Pillow (for the thumbnail).
"""
import argparse
import base64
import io
import json
import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def thumbnail():
    from PIL import Image
    img = Image.new("RGB", (160, 120))
    rng = random.Random(3)
    img.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256))
                 for _ in range(160 * 120)])
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=70)
    return base64.b64encode(buf.getvalue()).decode()


def snapshot(n, seed, thumb):
    rng = random.Random(seed)
    vehicles = []
    for i in range(n):
        state = rng.choices(["OK", "OOD", "FAULT"], [0.9, 0.07, 0.03])[0]
        offline = rng.random() < 0.01
        has_thumb = rng.random() < 0.02
        vehicles.append({
            "fleet": "depot",
            "vehicle": f"v{i:05}",
            "state": state,
            "reason": {"OK": "cleared", "OOD": "ood_frames", "FAULT": "camera_dark"}[state],
            "heartbeat_age_ms": rng.randrange(0, 400),
            "alarms_last_hour": rng.randrange(0, 12),
            "backlog": 0,
            "scores": [round(40 + 8 * rng.random(), 3) for _ in range(60)],
            "threshold": 46.12,
            "flag": "OFFLINE (connection_lost)" if offline else "",
            "evidence_sequence": rng.randrange(1, 99) if has_thumb else None,
            "evidence_dir": "event-17" if has_thumb else None,
            "thumbnail": thumb if has_thumb else None,
        })
    return {"fleet": "depot", "connected": True, "refused": 0, "vehicles": vehicles}


MEASURE = """
<script>
(() => {
  const texts = %s;
  const parse = [], drawn = [], total = [];
  for (let r = 0; r < texts.length; r++) {
    const t0 = performance.now();
    const snap = JSON.parse(texts[r]);
    const t1 = performance.now();
    draw(snap);
    void document.body.offsetHeight;
    const t2 = performance.now();
    parse.push(t1 - t0); drawn.push(t2 - t1); total.push(t2 - t0);
  }
  const med = a => a.slice().sort((x, y) => x - y)[Math.floor(a.length / 2)];
  const out = document.createElement('pre');
  out.id = 'redraw-result';
  out.textContent = JSON.stringify({
    rows: document.querySelectorAll('#rows tr').length,
    parse_ms: [med(parse), Math.max(...parse)],
    draw_layout_ms: [med(drawn), Math.max(...drawn)],
    total_ms: [med(total), Math.max(...total)],
  });
  document.body.appendChild(out);
})();
</script>
"""


def chromium():
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("chromium is not installed (apt-get install chromium)")


def measure(n, redraws, thumb, browser, page_path):
    page = page_path.read_text()
    first = json.dumps(snapshot(n, 0, thumb))
    texts = [json.dumps(snapshot(n, r + 1, thumb)) for r in range(redraws)]
    page = page.replace("/*SNAPSHOT*/", first.replace("</", "<\\/"))
    # no server here: the live stream is the measured loop instead
    page = page.replace("const source = new EventSource('events');", "const source = {};")
    page = page.replace("</body>", MEASURE % json.dumps(texts).replace("</", "<\\/") + "</body>")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dashboard.html"
        path.write_text(page)
        out = subprocess.run(
            ["timeout", "300", browser, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp}/profile", "--timeout=120000",
             "--dump-dom", path.as_uri()],
            capture_output=True, text=True, check=True)
    m = re.search(r'<pre id="redraw-result">(.*?)</pre>', out.stdout)
    if not m:
        raise SystemExit(f"no result in the page: {out.stderr[-2000:]}")
    result = json.loads(m.group(1).replace("&quot;", '"'))
    if result["rows"] != n:
        raise SystemExit(f"the table has {result['rows']} rows, not {n}")
    version = subprocess.run([browser, "--version"], capture_output=True, text=True).stdout
    return {"vehicles": n, "snapshot_bytes": len(first), "redraws": redraws, **result,
            "browser": version.strip()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("vehicles", nargs="*", type=int, default=[1000, 3200])
    ap.add_argument("--redraws", type=int, default=20)
    ap.add_argument("--page", type=Path, default=ROOT / "monitor/src/dashboard.html",
                    help="another version of the page (e.g. from git show) to compare")
    args = ap.parse_args()
    thumb, browser = thumbnail(), chromium()
    for n in args.vehicles:
        print(json.dumps(measure(n, args.redraws, thumb, browser, args.page)), flush=True)


if __name__ == "__main__":
    main()
