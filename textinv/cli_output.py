"""What the command line prints: results (and --json) on stdout; status lines, warnings and errors (one line and an
exit code) on stderr; the tables of `inspect`, `fetch --search` and `eval`; and the global options that choose how
(--quiet, --verbose, --debug), before or after the command. The commands in `cli.py` call these."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from textinv.cli_help import Group
from textinv.errors import Interrupted, MetadataWarning, TextinvError
from textinv.formats import TOOLS

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
# set by the app's callback from --debug, --quiet and --verbose
state = {"debug": bool(os.environ.get("TEXTINV_DEBUG")), "quiet": False, "verbose": False}


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a library error into one red line on stderr and an exit code; --debug re-raises."""
    try:
        yield
    except TextinvError as e:
        if state["debug"]:
            raise
        if isinstance(e, Interrupted):
            if not e.quiet:
                err.print(f"[yellow]{escape(str(e))}[/yellow]", highlight=False)
        else:
            print_error(str(e))
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        if state["debug"]:
            raise
        err.print("[red]interrupted[/red]")
        raise typer.Exit(130) from None
    except OSError as e:  # one the library did not expect: still one line, naming the file
        if state["debug"]:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print_error(where + (e.strerror or str(e)))
        raise typer.Exit(1) from None


def info(message: str) -> None:
    """A status line on stderr, silenced by --quiet."""
    if not state["quiet"]:
        err.print(message)


def print_json(obj: object) -> None:
    out.print(json.dumps(obj), markup=False, highlight=False, soft_wrap=True)


def print_error(message: str) -> None:
    """One line whatever the message holds: a name read from a file may carry line breaks (shown as \\n)."""
    one_line = message.replace("\r", "\\r").replace("\n", "\\n")
    err.print(f"[red]error:[/red] {escape(one_line)}")


_python_showwarning = warnings.showwarning


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A file's malformed-but-ignored field is one `warning:` line; other libraries' warnings (deprecations,
    advice) only with -v or --debug, as Python prints them."""
    if issubclass(category, MetadataWarning):
        err.print(f"[yellow]warning:[/yellow] {escape(str(message))}")
    elif state["verbose"]:
        _python_showwarning(message, category, filename, lineno, file, line)


def say_loading(model: str | None) -> None:
    """One status line naming the model about to load (what diffusers' own bars said, in our words), on a
    terminal: in a log or a pipe, a command that then fails still says only its one error line."""
    from textinv.models.source import DEFAULT_MODEL

    if not err.is_terminal:
        return
    name = model or os.environ.get("TEXTINV_MODEL") or DEFAULT_MODEL
    info(f"loading the model {escape(str(name))}" + (" (the small shipped one)" if name == "toy" else ""))


def print_inspected(desc: dict, as_json: bool) -> None:
    """One file of `inspect`: its model-check warnings, then its description (and model check) or its JSON."""
    for warning in desc.get("model_check", {}).get("warnings", []):
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    if as_json:
        print_json(desc)
        return
    print_description(desc)
    if "model_check" in desc:
        print_model_check(desc["model_check"])


def print_description(desc: dict) -> None:
    from rich.table import Table

    facts = [f"[bold]{desc['path']}[/bold]", f"format {desc['format']}", f"family {desc['family']}"]
    facts += [f"{k} {desc[k]}" for k in ("name", "step", "base_model", "base_model_hash") if k in desc]
    out.print(" · ".join(facts))
    table = Table("token", "vectors", "dim", "dtype", "mean norm", box=None, pad_edge=False)
    for t in desc["tokens"]:
        dim = f"{t['dim']}+{t['dim_2']}" if "dim_2" in t else str(t["dim"])
        norm = f"{t['norm']}" + (f" / {t['norm_2']}" if "norm_2" in t else "")
        if "parts" in t:  # SD3, Flux.1: name each part, the T5 one is not a CLIP
            dim = " + ".join(f"{key} {width}" for key, width in t["parts"].items())
            norm += f" / {t['norm_t5']}"
        table.add_row(t["name"], str(t["vectors"]), dim, t["dtype"], norm)
    out.print(table)


def print_model_check(check: dict) -> None:
    from rich.table import Table
    from rich.text import Text

    for t in check["tokens"]:
        out.print(f"{t['name']} against {check['model']} ({t['encoder']}): vocabulary median norm "
                  f"{t['vocab_median_norm']}" + (f", init word {t['init_word']}" if t["init_word"] else ""),
                  markup=False)
        table = Table("vector", "norm", "percentile", "cos to init", "nearest tokens", box=None, pad_edge=False)
        for v in t["vectors"]:
            near = ", ".join(f"{n['token']} {n['cosine']:.2f}" for n in v["nearest"])
            init = f"{v['init_word_cosine']:.3f}" if "init_word_cosine" in v else ""
            table.add_row(str(v["index"]), f"{v['norm']:.4g}", f"{v['norm_percentile']:.1f}%", init, Text(near))
        out.print(table)


def print_written(written: list, for_tool: str | None) -> None:
    """What `convert` and `merge` wrote (`formats.files.Written`), and the word that triggers each file where."""
    for w in written:
        info(f"wrote {w.path} ({w.format}: {', '.join(t.name for t in w.embedding.tokens)}; {w.embedding.family})")
        for note in w.notes:
            info(f"note: {note}")
        if for_tool is not None:
            if for_tool in w.steps:
                out.print(f"{TOOLS[for_tool]}: run", markup=False)
                out.print("  " + w.steps[for_tool].replace("\n", "\n  "), markup=False, highlight=False)
            out.print(f"{TOOLS[for_tool]}: use [bold]{escape(w.triggers.get(for_tool, '?'))}[/bold] in the prompt")
            if w.loads:  # SD3, Flux.1: which parts the tool takes
                info(f"  {TOOLS[for_tool]} loads {escape(w.loads)}")
        elif w.triggers:
            info("  loads in " + "; ".join(f"{TOOLS[t]} as {escape(word)}" + (" (--for it prints a step)"
                                                                            if t in w.steps else "")
                                           for t, word in w.triggers.items()))


def print_fetched(res, as_json: bool) -> None:
    """What `fetch` did (`concepts.fetch.FetchResult`): where the concept is, its token, and a prompt to try."""
    rev = (res.revision or "?")[:7]
    if res.from_cache:
        info(f"HF_HUB_OFFLINE is set: used the cached copy of {res.repo_id} (revision {rev}); the hub was not asked")
    elif res.skipped:
        info(f"{res.repo_id} is unchanged on the hub since it was fetched; --force fetches it again")
    if as_json:
        print_json(res.to_json())
        return
    verb = "already in" if res.skipped else "fetched into"
    out.print(f"{res.repo_id} {verb} {res.path}", markup=False)
    out.print(f"token: {res.token}   type: {res.concept_type or 'unknown'}   {res.family}", markup=False)
    out.print(f'example: textinv generate "{res.example_prompt}" --embedding {res.name}', markup=False)


def print_concepts(found: list, as_json: bool) -> None:
    if as_json:
        print_json([vars(c) for c in found])
        return
    if not found:
        info("no concepts match")
        return
    from rich.table import Table
    from rich.text import Text

    table = Table("name", "token", "type", "likes", "downloads", box=None, pad_edge=False)
    for c in found:
        cells = [c.name, c.token or "(file key)", c.concept_type or ""]
        cells += [str(v) if v is not None else "" for v in (c.likes, c.downloads)]
        table.add_row(*(Text(cell) for cell in cells))  # Text: a token like [x] is not rich markup
    out.print(table)


def print_eval(result) -> None:
    from rich.table import Table
    from rich.text import Text

    from textinv.evaluation.evaluate import best_rule_text

    def fmt(x: float | None) -> str:
        return "" if x is None else f"{x:.3f}"

    table = Table("checkpoint", "identity", "clip", "dino", "editability", "", box=None, pad_edge=False)
    for r in result.rows:
        mark = "best" if result.best is not None and r.label == result.best.label else ""
        table.add_row(Text(r.label), fmt(r.identity), fmt(r.identity_clip), fmt(r.identity_dino),
                      fmt(r.editability), mark)
    out.print(table)
    if result.best is not None:
        out.print(f"best: {result.best.label}" + (f" ({result.best.file})" if result.best.file else ""), markup=False)
        info(f"rule: {best_rule_text(result.settings.margin, result.rows)}")


class GlobalOptionsAnywhere(Group):
    """`--quiet`/`-q`, `--verbose`/`-v` and `--debug` also after the command (`textinv convert a b -q`), as users
    type them."""

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        if command is not None and not any(p.name == "quiet" for p in command.params):
            command.params.extend(_global_options())
        return command


def _global_options() -> list:
    """The app's --quiet, --verbose and --debug as options of a command, hidden from its help, setting `state` when
    given (--debug, as before the command, also shows other libraries' output)."""
    shadow = typer.Typer(add_completion=False)

    @shadow.command()
    def options(quiet: Annotated[bool, typer.Option("--quiet", "-q", hidden=True)] = False,
                verbose: Annotated[bool, typer.Option("--verbose", "-v", hidden=True)] = False,
                debug: Annotated[bool, typer.Option("--debug", hidden=True)] = False) -> None:
        pass

    def given(ctx, param, value) -> None:
        if value:
            state.update({param.name: True}, **({"verbose": True} if param.name == "debug" else {}))

    params = typer.main.get_command(shadow).params
    for param in params:
        param.expose_value = False
        param.callback = given
    return params
