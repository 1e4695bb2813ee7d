"""`textinv report`: the page holds the run's config, curves, samples and eval table, and a real browser shows it."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from textinv.cli import app
from textinv.evaluation.report import render_report
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import save_embedding

runner = CliRunner()


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as training and `textinv eval` leave it (written by hand: no model needed)."""
    run = tmp_path / "cat_2026-01-01T00-00-00"
    (run / "images").mkdir(parents=True)
    (run / "eval").mkdir()
    pictures = tmp_path / "my pictures"
    pictures.mkdir()
    for i, colour in enumerate(("orange", "teal", "navy")):
        Image.new("RGB", (40, 30), colour).save(pictures / f"cat{i}.png")
    (pictures / "notes.txt").write_text("not a picture")
    (run / "config.yaml").write_text("model:\n  source: toy\npersonalization:\n  placeholder_strings: ['*', '<dog>']\n"
                                     "  initializer_words: [cat, dog]\ntrain:\n  max_steps: 40\nlog:\n  name: cat\n"
                                     f"data:\n  paths: ['{pictures}']\n")
    (run / "embeddings").mkdir()
    save_embedding(Embedding([Token("*", torch.ones(1, 8))], step=40, init_words={"*": "cat"}),
                   run / "embeddings" / "cat.pt")
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
    assert page.count("data:image/png;base64,") == 6 + 4 + 3  # 2 steps x 3 image logs, 4 eval grids, 3 pictures
    assert page.count("<tr class=best>") == 1 and "Chosen step: <b>step 20</b>" in page
    assert "<polyline" in page and "validation loss" in page
    assert "a note &lt;b&gt;escaped&lt;/b&gt;" in page
    assert "initializer_words: [cat, dog]" in page
    # issue 23: what a user came for
    assert "<b>Finished</b> at step 40 of 40" in page
    assert "<td>*</td><td>cat</td>" in page and "<td>&lt;dog&gt;</td><td>dog</td>" in page  # every placeholder
    assert "embeddings/cat.pt" in page and "<code>embedding:cat</code>" in page and "<code>&lt;cat&gt;</code>" in page
    assert page.index("<details id=config>") > page.index("id=samples")  # the config last, folded
    assert str(run_dir.parent) not in page  # no path of this machine: the page is for sharing


def test_a_run_stopped_before_its_end_says_so_and_how_to_go_on(run_dir):
    (run_dir / "embeddings" / "cat.pt").unlink()
    save_embedding(Embedding([Token("*", torch.ones(1, 8))], step=20), run_dir / "embeddings" / "cat-20.pt")
    lines = (run_dir / "loss.csv").read_text().splitlines()
    (run_dir / "loss.csv").write_text("\n".join(lines[:26]) + "\n")  # steps 1-25 logged, then Ctrl-C
    page = render_report(run_dir)
    assert "<b>Stopped</b> at step 25 of 40" in page and f"textinv train --resume {run_dir.name}" in page
    assert "no final embedding yet" in page


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
    widths: Array.from(document.images).map(i => i.naturalWidth), svg: !!document.querySelector('#loss-chart'),
    state: document.querySelector('#state').innerText,
    placeholders: Array.from(document.querySelectorAll('#placeholders td:first-child')).map(td => td.innerText),
    result: Array.from(document.querySelectorAll('#result code')).map(c => c.innerText),
    pictures: document.querySelectorAll('#pictures img').length,
    ticks: document.querySelectorAll('#loss-chart .tick').length,
    configOpen: document.querySelector('#config').open,
    configShown: document.querySelector('#config pre').checkVisibility(),
    last: Array.from(document.body.children).filter(e => e.tagName !== 'SCRIPT' && e.id !== 'probe').pop().id});
  document.body.appendChild(p);
});</script>"""


def _browser_sees(run_dir, tmp_path) -> dict:
    """What headless Chromium shows of the run's report (the PROBE's findings)."""
    page = tmp_path / "probe.html"
    page.write_text(render_report(run_dir).replace("</body>", PROBE + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                              "--virtual-time-budget=5000", page.as_uri()],
                             capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_a_real_browser_shows_a_stopped_run_as_stopped(run_dir, tmp_path):
    (run_dir / "embeddings" / "cat.pt").unlink()
    lines = (run_dir / "loss.csv").read_text().splitlines()
    (run_dir / "loss.csv").write_text("\n".join(lines[:26]) + "\n")  # Ctrl-C after step 25
    seen = _browser_sees(run_dir, tmp_path)
    assert seen["state"].startswith("Stopped at step 25 of 40") and "textinv train --resume" in seen["state"]
    assert seen["result"] == [] and seen["pictures"] == 3


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_a_real_browser_shows_the_title_the_tables_and_every_image(run_dir, tmp_path):
    seen = _browser_sees(run_dir, tmp_path)
    assert seen["title"] == "textinv report: cat"
    assert seen["rows"] == 1 + 4  # header + init word + 3 steps
    assert seen["samples"] == 1 + 2
    assert len(seen["widths"]) == 13 and all(w > 0 for w in seen["widths"])  # every image decoded
    assert sorted(set(seen["widths"])) == [40, 48, 64]  # the training pictures at their size (40 px), grids, logs
    assert seen["svg"]
    # issue 23: the state, every placeholder, the result and its words, the pictures, axis ticks, config folded last
    assert seen["state"].startswith("Finished at step 40 of 40")
    assert seen["placeholders"] == ["*", "<dog>"]
    assert {"cat", "<cat>", "embedding:cat"} <= set(seen["result"])
    assert seen["pictures"] == 3 and seen["ticks"] >= 6
    assert seen["configOpen"] is False and seen["configShown"] is False and seen["last"] == "config"
