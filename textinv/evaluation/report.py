"""`textinv report RUN_DIR`: one self-contained HTML page about a run (no network: images are data URIs, the
curves inline SVG): whether it finished (step N of M), its placeholders, the result file and how to use it in each
tool, the training pictures, the loss and validation-loss curves, the `textinv eval` table with the chosen step, the
image logs over steps beside the init word's, and the config, last and folded. Paths of the machine it ran on are
shown by their last part only: the page is made to be shared."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from textinv.runs import Run

GRID_KEYS = ("samples_scaled", "init_word", "validation")  # columns of the samples table, in order

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 4px 10px; border-bottom: 1px solid #eee; text-align: left; }
tr.best { background: #e6f4e6; font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { image-rendering: pixelated; max-width: 420px; min-width: 128px; } pre { background: #f6f6f6; padding: 8px; }
.note { color: #666; } #state { font-size: 16px; } #pictures img { width: 128px; height: 128px; object-fit: cover; }
code { background: #f3f3f3; padding: 1px 4px; } details { margin-top: 28px; } summary { cursor: pointer; }
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
    losses = [(step, loss) for step, loss, _ in run.losses()]
    p = cfg.personalization
    parts = [f"<h1>textinv report: {_e(name)}</h1>", f"<p id=state>{_state(run, cfg, losses)}</p>",
             f"<p class=note>run folder {_e(run.path.resolve().name)} · model {_e(_shown(cfg.model.source))} · "
             f"{cfg.train.max_steps} steps at {cfg.data.resolution} px</p>",
             "<table id=placeholders><tr><th>placeholder</th><th>init word</th><th>vectors</th></tr>"
             + "".join(f"<tr><td>{_e(ph)}</td><td>{_e(w)}</td><td class=num>{p.num_vectors_per_token}</td></tr>"
                       for ph, w in zip(p.placeholder_strings, p.initializer_words, strict=False)) + "</table>"]
    if results and results.get("best"):
        parts.append(f"<p id=chosen>Chosen step: <b>{_e(results['best']['label'])}</b> "
                     f"<span class=note>({_e(results['rule'])})</span></p>")
    parts.append("<h2>The result</h2>")
    parts.append(_result(run))
    parts.append("<h2>Training pictures</h2>")
    parts.append(_pictures(cfg.data.paths))
    parts.append("<h2>Loss</h2>")
    parts.append(loss_chart(losses, run.validation_losses()) if losses else "<p class=note>no loss.csv yet</p>")
    parts.append("<h2>Evaluation</h2>")
    parts.append(_eval_table(run.path, results) if results else
                 "<p class=note>no eval.json: run <code>textinv eval RUN_DIR</code> to score the checkpoints</p>")
    parts.append("<h2>Samples over steps</h2>")
    parts.append(_samples_table(run.image_logs()))
    parts.append("<details id=config><summary>config.yaml (the resolved config; paths shortened to their last "
                 "part)</summary>")
    parts.append(f"<pre>{_e(_without_paths(run.config_text(), cfg))}</pre></details>")
    return (f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>textinv report: {_e(name)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _shown(source: str) -> str:
    """A model or folder as the page shows it: a hub id or `toy` as it is, a path of this machine by its name."""
    return Path(source).name if Path(source).is_absolute() or Path(source).exists() else source


def _without_paths(text: str, cfg) -> str:
    paths = [*cfg.data.paths, cfg.model.source, cfg.model.config or "", cfg.log.output_dir]
    for path in sorted({p for p in paths if p and Path(p).is_absolute()}, key=len, reverse=True):
        text = text.replace(path, f".../{Path(path).name}")
    return text


def _state(run: Run, cfg, losses: list[tuple[int, float]]) -> str:
    """Finished at step N of M, or stopped there (and how to go on)."""
    last, planned = (losses[-1][0] if losses else 0), cfg.train.max_steps
    finals = [f for f in run.final_files() if f.suffix in (".pt", ".safetensors")]
    done_at = _step_of(finals[0]) if finals else None
    if done_at is not None and done_at >= last:
        early = " (stopped early: the validation loss had stopped improving)" if done_at < planned else ""
        return f"<b>Finished</b> at step {done_at} of {planned}{early}."
    return (f"<b>Stopped</b> at step {last} of {planned}, before its final files were written; go on with "
            f"<code>textinv train --resume {_e(run.path.name)}</code>.")


def _step_of(path: Path) -> int | None:
    from textinv.errors import TextinvError
    from textinv.formats.files import load_embedding

    try:
        return load_embedding(path).step
    except TextinvError:
        return None


def _result(run: Run) -> str:
    """The final files, and the word that triggers the embedding in each tool that loads it."""
    from textinv.errors import TextinvError
    from textinv.formats import TOOLS
    from textinv.formats.files import load_embedding, trigger_words

    finals = run.final_files()
    if not finals:
        return "<p class=note>no final embedding yet: the run has not finished (see above)</p>"
    lines = ["<table id=result><tr><th>file</th><th>tool</th><th>put it in</th><th>prompt word</th></tr>"]
    where = {"a1111": "embeddings/", "comfyui": "models/embeddings/", "invokeai": "Model Manager (install)",
             "kohya": "--textual_inversion_embeddings FILE", "diffusers": "pipe.load_textual_inversion(FILE)"}
    for f in finals:
        try:
            emb = load_embedding(f)
            words = trigger_words(emb, f)
        except TextinvError:
            continue
        for tool, word in words.items():
            lines.append(f"<tr><td>embeddings/{_e(f.name)}</td><td>{_e(TOOLS.get(tool, tool))}</td>"
                         f"<td>{_e(where.get(tool, ''))}</td><td><code>{_e(word)}</code></td></tr>")
    lines.append("</table>")
    first = finals[0]
    placeholder = run.config(check=False).personalization.placeholder_strings[0]
    lines.append(f"<p>With textinv: <code>textinv generate \"a photo of {_e(placeholder)}\" --embedding "
                 f"{_e(run.path.name)}/embeddings/{_e(first.name)}</code></p>")
    return "\n".join(lines)


def _pictures(folders: list[str]) -> str:
    """The training pictures, as thumbnails (a folder that moved since is said to have)."""
    from textinv.errors import TextinvError
    from textinv.pictures import read_image

    cells, missing = [], []
    for folder in folders:
        if not Path(folder).is_dir():
            missing.append(Path(folder).name)
            continue
        for f in sorted(Path(folder).iterdir()):
            if f.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"):
                continue
            try:
                pic = read_image(f)
            except TextinvError:
                continue
            pic.thumbnail((256, 256))
            buf = io.BytesIO()
            pic.save(buf, format="PNG")
            data = base64.b64encode(buf.getvalue()).decode("ascii")
            cells.append(f'<img alt="training picture {_e(f.name)}" title="{_e(f.name)}" '
                         f'src="data:image/png;base64,{data}">')
    note = (f"<p class=note>not found where the config says: {_e(', '.join(missing))}</p>" if missing else "")
    return f"<div id=pictures>{' '.join(cells)}</div>{note}" if cells else note or "<p class=note>none</p>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def loss_chart(losses: list[tuple[int, float]], validation: list[tuple[int, float]], *, width: int = 720,
               height: int = 260) -> str:
    """An inline SVG: the training loss (thin), its running mean, and the validation loss (dots and line)."""
    pad = 52
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
    svg += _ticks(xy, (x0, x1), (y0, y1), height, pad)
    svg += [f'<text x="{width // 2}" y="{height - 4}" font-size="11" text-anchor="middle">optimizer step</text>',
            f'<text x="10" y="{height // 2}" font-size="11" text-anchor="middle" '
            f'transform="rotate(-90 10 {height // 2})">loss</text>',
            f'<text x="{width - pad}" y="{pad // 2 + 14}" font-size="12" text-anchor="end">'
            '<tspan fill="#9ab">loss</tspan> · <tspan fill="#1f6fb4">running mean</tspan>'
            + (' · <tspan fill="#d2691e">validation loss</tspan>' if validation else "") + "</text>",
            "</svg>"]
    return "\n".join(svg)


def _nice(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round values (1, 2 or 5 times a power of ten apart) from `lo` to `hi`."""
    import math

    span = (hi - lo) or abs(hi) or 1.0
    raw = span / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _ticks(xy, xs: tuple[float, float], ys: tuple[float, float], height: int, pad: int) -> list[str]:
    """Tick marks and labels on both axes: whole steps along x, round losses along y."""
    out = []
    for s in _nice(*xs):
        x = xy(s, ys[0]).split(",")[0]
        out.append(f'<g class=tick><line x1="{x}" y1="{height - pad}" x2="{x}" y2="{height - pad + 4}" '
                   f'stroke="#888"/><text x="{x}" y="{height - pad + 16}" font-size="10" text-anchor="middle">'
                   f'{int(s) if float(s).is_integer() else f"{s:g}"}</text></g>')
    for v in _nice(*ys):
        y = xy(xs[0], v).split(",")[1]
        out.append(f'<g class=tick><line x1="{pad - 4}" y1="{y}" x2="{pad}" y2="{y}" stroke="#888"/>'
                   f'<text x="{pad - 6}" y="{float(y) + 3:.1f}" font-size="10" text-anchor="end">{v:.3g}</text></g>')
    return out


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
