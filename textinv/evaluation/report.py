"""`textinv report RUN_DIR`: one self-contained HTML page about a run (no network: images are data URIs, the
curves inline SVG): the config, the loss and validation-loss curves, the image logs over steps beside the init
word's, and the `textinv eval` table with the chosen step."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from textinv.runs import Run

GRID_KEYS = ("samples_scaled", "init_word", "validation")  # columns of the samples table, in order

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 4px 10px; border-bottom: 1px solid #eee; text-align: left; }
tr.best { background: #e6f4e6; font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { image-rendering: pixelated; max-width: 420px; min-width: 128px; } pre { background: #f6f6f6; padding: 8px; }
.note { color: #666; }
"""


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report of `run_dir` (default: RUN_DIR/report.html); returns its path."""
    from textinv.atomic import write_text

    run = Run.open(run_dir)
    path = out or run.report_file
    write_text(path, render_report(run))
    return path


def render_report(run: Run | Path) -> str:
    """The report page of a run (a `Run`, or its folder)."""
    run = run if isinstance(run, Run) else Run.open(run)
    cfg = run.config(check=False)
    name = run.name
    results = run.read_eval()
    parts = [f"<h1>textinv report: {_e(name)}</h1>",
             f"<p class=note>run folder {_e(str(run.path))} · model {_e(cfg.model.source)} · placeholder "
             f"{_e(cfg.personalization.placeholder_strings[0])} (init word "
             f"{_e(cfg.personalization.initializer_words[0])})</p>"]
    if results and results.get("best"):
        parts.append(f"<p id=chosen>Chosen step: <b>{_e(results['best']['label'])}</b> "
                     f"<span class=note>({_e(results['rule'])})</span></p>")
    parts.append("<h2>Loss</h2>")
    losses = [(step, loss) for step, loss, _ in run.losses()]
    parts.append(loss_chart(losses, run.validation_losses()) if losses else "<p class=note>no loss.csv yet</p>")
    parts.append("<h2>Evaluation</h2>")
    parts.append(_eval_table(run.path, results) if results else
                 "<p class=note>no eval.json: run <code>textinv eval RUN_DIR</code> to score the checkpoints</p>")
    parts.append("<h2>Samples over steps</h2>")
    parts.append(_samples_table(run.image_logs()))
    parts.append("<h2>Config</h2>")
    parts.append(f"<pre>{_e(run.config_text())}</pre>")
    return (f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>textinv report: {_e(name)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def loss_chart(losses: list[tuple[int, float]], validation: list[tuple[int, float]], *, width: int = 720,
               height: int = 260) -> str:
    """An inline SVG: the training loss (thin), its running mean, and the validation loss (dots and line)."""
    pad = 40
    steps = [s for s, _ in losses + validation]
    values = [v for _, v in losses + validation]
    x0, x1 = min(steps), max(steps) or 1
    y0, y1 = min(values), max(values)
    if y1 == y0:
        y1 = y0 + 1e-9

    def xy(s: float, v: float) -> str:
        x = pad + (s - x0) / max(1, x1 - x0) * (width - 2 * pad)
        y = height - pad - (v - y0) / (y1 - y0) * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    k = max(1, len(losses) // 20)
    mean = [(s, sum(v for _, v in losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1]))
            for i, (s, _) in enumerate(losses)]
    svg = [f'<svg id=loss-chart xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'role="img" aria-label="loss over steps">',
           f'<rect x="{pad}" y="{pad // 2}" width="{width - 2 * pad}" height="{height - 1.5 * pad}" fill="#fafafa" '
           'stroke="#ccc"/>',
           f'<polyline fill="none" stroke="#9ab" stroke-width="1" points="{" ".join(xy(s, v) for s, v in losses)}"/>',
           f'<polyline fill="none" stroke="#1f6fb4" stroke-width="2" points="{" ".join(xy(s, v) for s, v in mean)}"/>']
    if validation:
        svg.append(f'<polyline fill="none" stroke="#d2691e" stroke-width="2" '
                   f'points="{" ".join(xy(s, v) for s, v in validation)}"/>')
        svg += [f'<circle cx="{xy(s, v).split(",")[0]}" cy="{xy(s, v).split(",")[1]}" r="3" fill="#d2691e"/>'
                for s, v in validation]
    svg += [f'<text x="{pad}" y="{height - 8}" font-size="11">step {x0}</text>',
            f'<text x="{width - pad}" y="{height - 8}" font-size="11" text-anchor="end">step {x1}</text>',
            f'<text x="4" y="{pad // 2 + 10}" font-size="11">{y1:.4g}</text>',
            f'<text x="4" y="{height - pad}" font-size="11">{y0:.4g}</text>',
            f'<text x="{width - pad}" y="{pad // 2 + 14}" font-size="12" text-anchor="end">'
            '<tspan fill="#9ab">loss</tspan> · <tspan fill="#1f6fb4">running mean</tspan>'
            + (' · <tspan fill="#d2691e">validation loss</tspan>' if validation else "") + "</text>",
            "</svg>"]
    return "\n".join(svg)


def _eval_table(run_dir: Path, results: dict) -> str:
    best = (results.get("best") or {}).get("label")

    def num(x) -> str:
        return "" if x is None else f"{x:.3f}"

    lines = ["<table id=eval><tr><th>checkpoint</th><th>identity</th><th>CLIP identity</th><th>DINO identity</th>"
             "<th>editability</th><th>grid (rows: prompts, columns: seeds)</th></tr>"]
    for r in results["rows"]:
        grid = run_dir / r["grid"] if r.get("grid") else None
        pic = _img(grid, f"eval grid {r['label']}") if grid is not None and grid.is_file() else ""
        cls = " class=best" if r["label"] == best else ""
        lines.append(f"<tr{cls}><td>{_e(r['label'])}</td><td class=num>{num(r['identity'])}</td>"
                     f"<td class=num>{num(r.get('identity_clip'))}</td><td class=num>{num(r.get('identity_dino'))}</td>"
                     f"<td class=num>{num(r.get('editability'))}</td><td>{pic}</td></tr>")
    lines.append("</table>")
    s = results.get("settings", {})
    prompts = [s.get("identity_prompt", "")] + list(s.get("edit_prompts", []))
    lines.append(f"<p class=note>{s.get('seeds')} seed(s) per prompt, {s.get('steps')} steps, guidance "
                 f"{s.get('cfg')}; prompts: {_e(' | '.join(prompts))}</p>")
    lines += [f"<p class=note>{_e(n)}</p>" for n in results.get("notes", [])]
    return "\n".join(lines)


def _samples_table(logs: dict[int, dict[str, Path]]) -> str:
    found = {step: {k: f for k, f in keys.items() if k in GRID_KEYS} for step, keys in logs.items()}
    found = {step: keys for step, keys in found.items() if keys}
    if not found:
        return "<p class=note>no image logs (log.image_every is 0)</p>"
    keys = [k for k in GRID_KEYS if any(k in row for row in found.values())]
    heads = {"samples_scaled": "placeholder", "init_word": "init word", "validation": "validation prompts"}
    lines = ["<table id=samples><tr><th>step</th>" + "".join(f"<th>{heads[k]}</th>" for k in keys) + "</tr>"]
    for step in sorted(found):
        cells = "".join(f"<td>{_img(found[step][k], f'{k} step {step}') if k in found[step] else ''}</td>"
                        for k in keys)
        lines.append(f"<tr><td>{step}</td>{cells}</tr>")
    lines.append("</table>")
    return "\n".join(lines)
