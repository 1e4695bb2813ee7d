"""`textinv report`: the page holds the run's config, curves, samples and eval table, and a real browser shows it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile

import pytest
from PIL import Image
from typer.testing import CliRunner

from textinv.cli import app
from textinv.evaluation.report import render_report

runner = CliRunner()


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as training and `textinv eval` leave it (written by hand: no model needed)."""
    run = tmp_path / "cat_2026-01-01T00-00-00"
    (run / "images").mkdir(parents=True)
    (run / "eval").mkdir()
    (run / "config.yaml").write_text("model:\n  source: toy\npersonalization:\n  placeholder_strings: ['*']\n"
                                     "  initializer_words: [cat]\nlog:\n  name: cat\n")
    (run / "loss.csv").write_text("step,loss,lr\n" + "".join(f"{s},{1 / s:.4f},0.005\n" for s in range(1, 41)))
    (run / "validation.csv").write_text("step,val_loss\n10,0.5\n20,0.3\n30,0.25\n40,0.26\n")
    colours = {"samples_scaled": "red", "init_word": "blue", "validation": "green"}
    for step in (20, 40):
        for key, colour in colours.items():
            Image.new("RGB", (64, 32), colour).save(run / "images" / f"{key}_gs-{step:06d}.png")
    rows = []
    for label, step, ident in (("init word (cat)", None, 0.2), ("step 0", 0, 0.25), ("step 20", 20, 0.6),
                               ("step 40", 40, 0.55)):
        grid = f"eval/{'init-word' if step is None else f'step-{step:06d}'}.png"
        Image.new("RGB", (48, 24), "purple").save(run / grid)
        rows.append({"label": label, "step": step, "file": None, "baseline": step is None, "identity": ident,
                     "identity_clip": ident, "identity_dino": None, "editability": 0.3, "per_prompt": {},
                     "grid": grid})
    (run / "eval.json").write_text(json.dumps({
        "rows": rows, "best": {"label": "step 20", "step": 20, "file": None}, "rule": "highest identity ...",
        "settings": {"seeds": 2, "steps": 25, "cfg": 5.0, "identity_prompt": "a photo of {}", "edit_prompts": []},
        "notes": ["a note <b>escaped</b>"]}))
    return run


def test_the_page_is_self_contained_and_holds_every_part(run_dir):
    page = render_report(run_dir)
    assert "<title>textinv report: cat</title>" in page
    assert not re.search(r"(src|href)=\"?https?:", page)  # nothing fetched from the network
    assert page.count("data:image/png;base64,") == 6 + 4  # 2 steps x 3 image logs, 4 eval grids
    assert page.count("<tr class=best>") == 1 and "Chosen step: <b>step 20</b>" in page
    assert "<polyline" in page and "validation loss" in page
    assert "a note &lt;b&gt;escaped&lt;/b&gt;" in page
    assert "initializer_words: [cat]" in page


def test_cli_writes_the_report_and_rejects_a_folder_that_is_not_a_run(run_dir, tmp_path):
    res = runner.invoke(app, ["report", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert (run_dir / "report.html").is_file() and res.stdout.strip() == str(run_dir / "report.html")
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 1 and "not a textinv run folder" in res.stderr


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Writes what the browser sees into the DOM before it is dumped: each image's decoded width.
PROBE = """<script>window.addEventListener('load', () => {
  const p = document.createElement('pre'); p.id = 'probe';
  p.textContent = JSON.stringify({title: document.title, rows: document.querySelectorAll('#eval tr').length,
    samples: document.querySelectorAll('#samples tr').length,
    widths: Array.from(document.images).map(i => i.naturalWidth), svg: !!document.querySelector('#loss-chart')});
  document.body.appendChild(p);
});</script>"""


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_a_real_browser_shows_the_title_the_tables_and_every_image(run_dir, tmp_path):
    page = tmp_path / "probe.html"
    page.write_text(render_report(run_dir).replace("</body>", PROBE + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                              "--virtual-time-budget=5000", page.as_uri()],
                             capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    seen = json.loads(found.group(1).replace("&quot;", '"'))
    assert seen["title"] == "textinv report: cat"
    assert seen["rows"] == 1 + 4  # header + init word + 3 steps
    assert seen["samples"] == 1 + 2
    assert len(seen["widths"]) == 10 and all(w > 0 for w in seen["widths"])  # every image decoded
    assert sorted(set(seen["widths"])) == [48, 64]
    assert seen["svg"]
