"""The `textinv` command line: parses arguments, calls the library, prints results. No logic lives here."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from textinv import __version__
from textinv.cli_output import (
    GlobalOptionsAnywhere,
    err,
    info,
    out,
    print_error,
    print_eval,
    print_json,
    say_loading,
    show_warning,
    state,
    user_errors,
)
from textinv.cli_setup import is_main_process, quiet_libraries, sigterm_as_interrupt
from textinv.errors import TextinvError, UsageError
from textinv.formats import SHORTHANDS, TOOLS, WRITE_NAMES

app = typer.Typer(
    cls=GlobalOptionsAnywhere,
    name="textinv",
    help="Textual inversion for Stable Diffusion: teach a model a new word from a few pictures.",
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"textinv {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks (also TEXTINV_DEBUG=1).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only results and errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show other libraries' warnings, logs "
                                          "and progress bars.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Textual inversion for Stable Diffusion: teach a model a new word from a few pictures."""
    state["debug"] = debug or bool(os.environ.get("TEXTINV_DEBUG"))
    state["quiet"] = quiet or not is_main_process()  # under accelerate launch, the first process speaks
    state["verbose"] = verbose or state["debug"]
    out.quiet = not is_main_process()
    warnings.showwarning = show_warning


# --- embeddings: inspect, convert, merge -------------------------------------------------------------------


@app.command(rich_help_panel="Embeddings")
def inspect(
    files: Annotated[list[Path], typer.Argument(help="Embedding files (any supported format) or concept folders.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per file.")] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Also compare each vector with this model's "
                                              "vocabulary: norms, nearest tokens, cosine to the init word.",
                                              show_default=False)] = None,
) -> None:
    """Show what embedding files hold: format, model family, and each token's vectors.

    Example: textinv inspect my_cat.pt learned_embeds.bin (--model M adds checks against the model's vocabulary)
    """
    from textinv.cli_output import print_inspected
    from textinv.models.vocabulary import inspect_files

    failed = 0
    with user_errors():
        def on_load() -> None:
            quiet_libraries(state["verbose"])
            say_loading(model)

        for desc in inspect_files(files, model, raise_errors=state["debug"], on_load=on_load):
            if "error" in desc:
                failed += 1
                if as_json:
                    print_json(desc)
                print_error(desc["error"])
            else:
                print_inspected(desc, as_json)
    if failed:
        raise typer.Exit(1)


WriteFormat = Enum("WriteFormat", {n: n for n in (*WRITE_NAMES, *SHORTHANDS)}, type=str)
ForTool = Enum("ForTool", {n: n for n in TOOLS}, type=str)

ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite the output if it exists.")]
ToOpt = Annotated[
    WriteFormat | None,
    typer.Option("--to", help="Output layout (default: from the extension; pt/bin/safetensors/png are shorthands)."),
]
ForOpt = Annotated[
    ForTool | None,
    typer.Option("--for", help="Write the layout this tool loads, and print the word that triggers it there."),
]
SplitOpt = Annotated[bool, typer.Option("--split", help="Write one file per token: OUT-<token>.ext.")]


def _write(emb, dst: Path, to, for_tool, force: bool, split: bool) -> list:
    """Write `emb` (each of its tokens with --split): the `formats.files.Written` files."""
    from textinv.formats.files import write_files

    return write_files(emb, dst, format=to.value if to else None, for_tool=for_tool.value if for_tool else None,
                       split=split, force=force)


@app.command(rich_help_panel="Embeddings")
def convert(
    src: Annotated[Path, typer.Argument(help="Embedding file to read (any supported format).")],
    dst: Annotated[Path, typer.Argument(help="Output file; its format follows --for, --to or the extension.")],
    *,
    to: ToOpt = None,
    for_tool: ForOpt = None,
    token: Annotated[
        str | None,
        typer.Option(help="Rename the token (OLD=NEW for one of several), or pick one token of several by name."),
    ] = None,
    split: SplitOpt = False,
    force: ForceOpt = False,
    strength: Annotated[float | None, typer.Option(help="Write a blend toward the init word: 0 gives its vectors, "
                                                   "1 the learned ones (needs --model).", show_default=False)] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="For --strength: the model the embedding was "
                                              "trained on (hub id, folder, checkpoint or toy).")] = None,
    init_word: Annotated[str | None, typer.Option("--init-word", "-i", help="For --strength, when the file does "
                                                  "not record its init word.")] = None,
) -> None:
    """Convert an embedding between formats, losslessly (or, with --strength, blended toward its init word).

    Example: textinv convert learned_embeds.bin my_cat.pt --for a1111
    """
    from textinv.cli_output import print_written
    from textinv.formats.edit import rename_or_pick
    from textinv.formats.files import load_embedding

    with user_errors():
        emb = load_embedding(src)
        if token:
            rename_or_pick(emb, token)
        if strength is not None:
            from textinv.models.strength import with_strength

            emb = with_strength(emb, strength, model=model, init_word=init_word)
        written = _write(emb, dst, to, for_tool, force, split)
    print_written(written, for_tool.value if for_tool else None)


class Conflict(str, Enum):
    error = "error"
    rename = "rename"
    skip = "skip"
    ask = "ask"


@app.command(rich_help_panel="Embeddings")
def merge(
    files: Annotated[list[Path], typer.Argument(help="Embedding files to merge (any formats).")],
    *,
    output: Annotated[Path, typer.Option("--output", "-o", help="The merged file to write.")],
    on_conflict: Annotated[
        Conflict,
        typer.Option(help="A placeholder in two files: error, rename (* -> *_2), skip, or ask (terminal only)."),
    ] = Conflict.error,
    to: ToOpt = None,
    for_tool: ForOpt = None,
    split: SplitOpt = False,
    force: ForceOpt = False,
) -> None:
    """Merge several embedding files into one; needs no model and no GPU.

    Several tokens in one file load only in the paper layout (.pt); for other tools pass --split.
    Example: textinv merge cat.pt dog.bin -o pets.pt --on-conflict rename
    """
    from textinv.cli_output import print_written
    from textinv.formats.edit import merge_embeddings
    from textinv.formats.files import load_embedding

    with user_errors():
        if on_conflict is Conflict.ask and not sys.stdin.isatty():
            raise TextinvError("--on-conflict ask needs a terminal; use error, rename or skip in scripts")
        loaded = [load_embedding(f) for f in files]
        merged = merge_embeddings(loaded, on_conflict=on_conflict.value, ask=_ask_placeholder)
        written = _write(merged, output, to, for_tool, force, split)
    print_written(written, for_tool.value if for_tool else None)


def _ask_placeholder(placeholder: str, source: str) -> str:
    return typer.prompt(f"placeholder {placeholder!r} from {source} is taken; new placeholder")


# --- concepts: fetch ---------------------------------------------------------------------------------------


class FetchFormat(str, Enum):
    pt = "pt"
    bin = "bin"
    safetensors = "safetensors"


@app.command(rich_help_panel="Embeddings")
def fetch(
    concept: Annotated[
        str | None, typer.Argument(help="Concept name (cat-toy, from the sd-concepts-library) or a hub repo id.")
    ] = None,
    *,
    search: Annotated[
        str | None, typer.Option("--search", metavar="WORD", help="List concepts whose name has WORD.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="With --search: at most this many results.")] = 20,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The embeddings folder to save into.")] = Path("embeddings"),
    to: Annotated[FetchFormat | None, typer.Option(help="Save in this format (default: as on the hub).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Fetch again even if already there.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Fetch a concept from the Hugging Face hub (sd-concepts-library) into the embeddings folder, or search it.

    Example: textinv fetch cat-toy
    """
    from textinv.cli_output import print_concepts, print_fetched
    from textinv.concepts.fetch import fetch_concept

    if (concept is None) == (search is None):
        raise typer.BadParameter("give a concept name to fetch, or --search WORD (not both)")
    with user_errors():
        if search is not None:
            from textinv.concepts.search import search_concepts

            found = search_concepts(search, limit)
        else:
            from textinv.progress import DownloadProgress

            reporter = DownloadProgress(err, enabled=not state["quiet"] and not as_json)
            fmt = to.value if to else None
            res = fetch_concept(concept, out_dir=out_dir, to=fmt, force=force, reporter=reporter)
    if search is not None:
        print_concepts(found, as_json)
    else:
        print_fetched(res, as_json)


# --- images: generate, img2img ------------------------------------------------------------------------------

# Options of `generate` and `img2img` (and of each dream> line). Short flags follow InvokeAI's dream.py.
_ImgModel = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Hub id, diffusers folder, .ckpt/.safetensors file, or toy "
                 "\\[default: $TEXTINV_MODEL, else stable-diffusion-v1-5/stable-diffusion-v1-5].",
                 rich_help_panel="Model", show_default=False),
]
_ImgModelConfig = Annotated[
    Path | None,
    typer.Option("--model-config", help="For a .ckpt/.safetensors: a local diffusers folder of the same family "
                 "to take its config from (no network needed).", rich_help_panel="Model", show_default=False),
]
_ImgEmbedding = Annotated[
    list[str] | None,
    typer.Option("--embedding", "-e", help="Embedding file, folder of them, or concept name in ./embeddings "
                 "(repeatable).", rich_help_panel="Model", show_default=False),
]
_ImgToken = Annotated[
    list[str] | None,
    typer.Option("--token", help="New placeholder for each --embedding, in order (renames on load).",
                 rich_help_panel="Model", show_default=False),
]
_ImgDevice = Annotated[
    str | None, typer.Option("--device", help="cpu, cuda, cuda:N or mps \\[default: best available].",
                             rich_help_panel="Model", show_default=False),
]
_ImgDtype = Annotated[
    str | None, typer.Option("--dtype", help="fp16, bf16 or fp32 \\[default: fp16 on a GPU, fp32 on the CPU].",
                             rich_help_panel="Model", show_default=False),
]
_ImgCount = Annotated[int, typer.Option("-n", "--count", "--iterations", help="Number of images.",
                                        rich_help_panel="Sampling")]
_ImgSteps = Annotated[int, typer.Option("--steps", "-s", help="Denoising steps.", rich_help_panel="Sampling")]
_ImgCfg = Annotated[float, typer.Option("--cfg", "-C", "--cfg-scale", help="Classifier-free guidance scale.",
                                        rich_help_panel="Sampling")]
_ImgSeed = Annotated[
    int | None, typer.Option("--seed", "-S", help="Seed of the first image; image i uses seed+i \\[default: random].",
                             rich_help_panel="Sampling", show_default=False),
]
_ImgWidth = Annotated[int | None, typer.Option("--width", "-W", help="Width in pixels, a multiple of 8 "
                                               "\\[default: the model's].", rich_help_panel="Sampling",
                                               show_default=False)]
_ImgHeight = Annotated[int | None, typer.Option("--height", "-H", help="Height in pixels, a multiple of 8 "
                                                "\\[default: the model's].", rich_help_panel="Sampling",
                                                show_default=False)]
_ImgNegative = Annotated[str, typer.Option("--negative", "--negative-prompt", help="What to steer away from.",
                                           rich_help_panel="Sampling", show_default=False)]
_ImgScheduler = Annotated[
    str | None,
    typer.Option("--scheduler", "-A", "--sampler", help="ddim, plms, euler, euler_a, heun, dpm_2, dpm_2_a, "
                 "dpmpp_2m, dpmpp_2m_karras, lms, unipc or ddpm (InvokeAI's k_ names work) \\[default: the model's].",
                 rich_help_panel="Sampling", show_default=False),
]
_ImgStrength = Annotated[float, typer.Option("--strength", "-f", help="img2img: 0 keeps the init image, 1 "
                                             "replaces it.", rich_help_panel="Sampling")]
_ImgOut = Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs.", rich_help_panel="Output")]
_ImgBatch = Annotated[
    int | None, typer.Option("--batch-size", "-b", help="Images made together in one pass \\[default: 8 on the CPU, "
                             "4 on a GPU]; lower it if memory runs out.", rich_help_panel="Sampling",
                             show_default=False),
]
_ImgNoGrid = Annotated[bool, typer.Option("--no-grid", help="No contact sheet when -n > 1.",
                                          rich_help_panel="Output")]
_ImgJson = Annotated[bool, typer.Option("--json", help="Print one JSON object per image (path, seed, prompt).",
                                        rich_help_panel="Output")]


@app.command(rich_help_panel="Images")
def generate(
    ctx: typer.Context,
    prompt: Annotated[str | None, typer.Argument(help="The prompt, e.g. 'a photo of *'. Leave it out on a "
                                                 "terminal for the dream> prompt.", show_default=False)] = None,
    *,
    embedding: _ImgEmbedding = None,
    token: _ImgToken = None,
    model: _ImgModel = None,
    model_config: _ImgModelConfig = None,
    device: _ImgDevice = None,
    dtype: _ImgDtype = None,
    n: _ImgCount = 1,
    steps: _ImgSteps = 50,
    cfg: _ImgCfg = 7.5,
    seed: _ImgSeed = None,
    width: _ImgWidth = None,
    height: _ImgHeight = None,
    negative: _ImgNegative = "",
    scheduler: _ImgScheduler = None,
    init_img: Annotated[Path | None, typer.Option("--init-img", "--init_img", "-I", help="Start from this image "
                                                  "(img2img).", rich_help_panel="Sampling", show_default=False)] = None,
    strength: _ImgStrength = 0.5,
    batch_size: _ImgBatch = None,
    out_dir: _ImgOut = Path("outputs"),
    no_grid: _ImgNoGrid = False,
    as_json: _ImgJson = False,
) -> None:
    """Make images from a prompt with embeddings. Example: textinv generate "a photo of *" --embedding my_cat.pt

    With no PROMPT on a terminal it opens a dream> prompt that keeps the model loaded: type a quoted prompt and the same flags ("a photo of *" -s100 -n4 --init_img=x.png --strength=0.5); q or Ctrl-D quits.
    """
    _images(ctx.params)  # the options above, by name


@app.command(rich_help_panel="Images")
def img2img(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="The prompt, e.g. 'waterfall and rainbow in the style of *'.")],
    *,
    init_img: Annotated[Path, typer.Option("--init-img", "--init_img", "-I", help="The starting image.",
                                           rich_help_panel="Sampling")],
    strength: _ImgStrength = 0.5,
    embedding: _ImgEmbedding = None,
    token: _ImgToken = None,
    model: _ImgModel = None,
    model_config: _ImgModelConfig = None,
    device: _ImgDevice = None,
    dtype: _ImgDtype = None,
    n: _ImgCount = 1,
    steps: _ImgSteps = 50,
    cfg: _ImgCfg = 7.5,
    seed: _ImgSeed = None,
    width: _ImgWidth = None,
    height: _ImgHeight = None,
    negative: _ImgNegative = "",
    scheduler: _ImgScheduler = None,
    batch_size: _ImgBatch = None,
    out_dir: _ImgOut = Path("outputs"),
    no_grid: _ImgNoGrid = False,
    as_json: _ImgJson = False,
) -> None:
    """Make images from a prompt and a starting image. Example: textinv img2img "a sketch of *" --init-img x.png

    Runs int(steps x strength) denoising steps from the init image, resized to --width/--height if given.
    """
    _images(ctx.params)  # the options above, by name: generate's, with --init-img required


def _images(o: dict) -> None:
    """`generate` and `img2img`, from their options by name: check what the options show before the model loads,
    load it once, then make the prompt's images, or one prompt's per dream> line when there is none."""
    from textinv.generation import dream
    from textinv.generation.session import Session, check_out_dir
    from textinv.progress import ImageProgress

    reporter = ImageProgress(err, enabled=not state["quiet"])
    with user_errors(), sigterm_as_interrupt():
        dream.request_of(o).check()
        check_out_dir(o["out_dir"])
        if o["prompt"] is None and not dream.stdin_is_terminal():
            raise UsageError('no PROMPT given and stdin is not a terminal; pass one: textinv generate "a photo of *"')

        def on_load() -> None:
            quiet_libraries(state["verbose"])
            say_loading(o["model"])

        session = Session.open(o["model"], model_config=o["model_config"], device=o["device"], dtype=o["dtype"],
                               embeddings=o["embedding"] or [], tokens=o["token"], reporter=reporter,
                               on_load=on_load)
        if o["prompt"] is not None:
            return _make(session, o, reporter)
    command = typer.main.get_command(app).commands["generate"]  # each dream> line takes this command's flags

    def line(args: list[str]) -> None:
        with contextlib.suppress(typer.Exit), user_errors():
            options = dream.line_options(command, args, start=o)
            if options is None:  # --help
                return
            if options["embedding"]:
                session.add_embeddings(options["embedding"], tokens=options["token"])
            _make(session, options, reporter)

    info('dream> takes a prompt and flags, e.g. "a photo of *" -s 50 -n 4; q quits')
    with sigterm_as_interrupt():
        dream.run(line, on_error=print_error, history=dream.history_file())


def _make(session, o: dict, reporter) -> None:
    """One prompt's images: make and save them, then print their paths (or JSON lines) and the contact sheet's."""
    from textinv.generation.dream import request_of
    from textinv.generation.metadata import left_out

    made = session.make(request_of(o), o["out_dir"], grid=False if o["no_grid"] else None, reporter=reporter)
    if made.images and (skipped := left_out(made.images[0].params)):  # chunks their readers would misread
        info("note: the PNGs leave out " + "; ".join(f"{chunk}: {why}" for chunk, why in skipped.items()))
    for image, path in zip(made.images, made.paths, strict=True):
        if o["as_json"]:
            print_json({"path": str(path), "seed": image.seed, "prompt": o["prompt"]})
        else:
            out.print(str(path), markup=False)
    if made.grid is not None:
        info(f"grid: {made.grid}")


# --- training: train, demo ------------------------------------------------------------------------------------


# The config key each `train` option sets (an option not given leaves the config's value).
_TRAIN_KEYS = {"DIR": "data.paths", "--init-word": "personalization.initializer_words",
               "--placeholder": "personalization.placeholder_strings", "--name": "log.name", "--model": "model.source",
               "--device": "train.device", "--out": "log.output_dir",
               "--report-to": "log.report_to", "--model-config": "model.config",
               "--gradient-checkpointing": "train.gradient_checkpointing", "--max-memory": "train.max_memory"}


@app.command(rich_help_panel="Training")
def train(
    data_dirs: Annotated[
        list[Path] | None,
        typer.Argument(help="Folder of 3-5 images of the concept (one folder per placeholder) \\[default: the config's "
                       "data.paths].", show_default=False,
                       metavar="DIR"),
    ] = None,
    *,
    init_word: Annotated[
        list[str] | None,
        typer.Option("--init-word", "-i", help="A word close to the concept (one per placeholder).",
                     rich_help_panel="Concept", show_default=False),
    ] = None,
    placeholder: Annotated[
        list[str] | None,
        typer.Option("--placeholder", "-p", help="The new word to learn \\[default: *].", rich_help_panel="Concept",
                     show_default=False),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Run name \\[default: the folder's name].",
                                 rich_help_panel="Output", show_default=False),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="YAML config: a file (textinv's or the paper code's layout), or "
                     "v1-finetune / v2-finetune / sdxl-finetune \\[default: by the model's family].",
                     rich_help_panel="Training", show_default=False),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Hub id, diffusers folder, .ckpt/.safetensors file or toy.",
                                 rich_help_panel="Model", show_default=False),
    ] = None,
    model_config: _ImgModelConfig = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Optimizer steps (with --resume: train on to this step).",
                                 rich_help_panel="Training", show_default=False),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Override any config key, e.g. optim.learning_rate=1e-3.",
                     rich_help_panel="Training", show_default=False),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel="Model",
                                 show_default=False),
    ] = None,
    out_dir: Annotated[
        str | None, typer.Option("--out", "-o", help="Where run folders go \\[default: logs].",
                                 rich_help_panel="Output", show_default=False),
    ] = None,
    output_dir: Annotated[str | None, typer.Option("--output-dir", hidden=True)] = None,  # the old spelling
    report_to: Annotated[
        str | None, typer.Option("--report-to", help="tensorboard, wandb or all: also log to these trackers.",
                                 rich_help_panel="Output", show_default=False),
    ] = None,
    gradient_checkpointing: Annotated[
        bool, typer.Option("--gradient-checkpointing", help="Recompute the UNet's activations in the backward pass: "
                           "less memory, slower.", rich_help_panel="Training", show_default=False),
    ] = False,
    max_memory: Annotated[
        float | None, typer.Option("--max-memory", metavar="GIB", help="Memory budget in GiB: textinv picks the "
                                   "fastest settings estimated to fit (bf16 weights, VAE offload, checkpointing).",
                                   rich_help_panel="Training", show_default=False),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", metavar="LOGDIR", help="Continue a run from its last checkpoint.",
                                  rich_help_panel="Training", show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object at the end: the run folder, the "
                                          "final files, the steps, the final loss.", rich_help_panel="Output")] = False,
) -> None:
    """Learn an embedding from a folder of images. Example: textinv train ./my_cat --init-word cat

    Writes logs/<name>_<timestamp>/ with config.yaml, embeddings/, images/, loss.csv and loss.png. Ctrl-C saves a checkpoint; `textinv train --resume LOGDIR` continues it. Several GPUs: accelerate launch -m textinv train ...
    """
    from textinv import config as cfgmod
    from textinv.progress import TrainProgress
    from textinv.runs import resume_config
    from textinv.training.loop import train as run_training
    from textinv.training.setup import check_before_loading

    given = {"DIR": [str(d) for d in data_dirs] if data_dirs else None, "--init-word": init_word or None,
             "--placeholder": placeholder or None, "--name": name, "--config": config, "--model": model,
             "--model-config": str(model_config) if model_config else None, "--set": set_, "--device": device,
             "--out": out_dir or output_dir, "--report-to": report_to,
             "--gradient-checkpointing": gradient_checkpointing or None, "--max-memory": max_memory}
    with user_errors():
        notes: list[str] = []
        if resume is not None:  # only --max-steps may change; any other option is refused by name
            cfg = resume_config(resume, max_steps=max_steps, others=given)
        else:
            keys = {_TRAIN_KEYS[f]: v for f, v in given.items() if f in _TRAIN_KEYS}
            cfg = cfgmod.build_config(config, set_, notes=notes, **keys, **{"train.max_steps": max_steps})
        check_before_loading(cfg, resume=resume is not None)
        for note in notes:
            info(f"[yellow]note:[/yellow] {escape(note)}")
        quiet_libraries(state["verbose"])
        say_loading(cfg.model.source)
        result = run_training(cfg, reporter=TrainProgress(err, quiet=state["quiet"]), resume=resume)
    if as_json:
        return print_json(result.to_json())
    out.print(f"{result.embedding_path}", highlight=False)
    info(f"trained to step {result.step}; run folder {result.run_dir}")


@app.command(rich_help_panel="Training")
def demo(
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the pictures, the training run and demo.png.")
    ] = Path("textinv-demo"),
    output: Annotated[Path | None, typer.Option("--output", hidden=True)] = None,  # the old spelling
    steps: Annotated[
        int | None, typer.Option("--steps", help="Training steps (default: the packaged configs/toy.yaml's).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the training pictures and the samples.")] = 0,
) -> None:
    """Train and sample on the small shipped model, on the CPU, in a few minutes. Example: textinv demo"""
    from textinv.progress import TrainProgress
    from textinv.toy.demo import run_demo

    quiet = state["quiet"]
    quiet_libraries(state["verbose"])
    with user_errors():
        result = run_demo(
            output or out_dir,
            max_steps=steps,
            seed=seed,
            reporter=TrainProgress(err, quiet=quiet),  # sampling takes a second or two: status lines, no bar
        )
    info(
        f"the judge sees the concept in {result.learned_match:.0%} of '{result.learned_prompt}' and "
        f"{result.init_match:.0%} of '{result.init_prompt}'; editability: {result.edit_match:.0%} of "
        f"'{result.edit_prompt}' in the colour asked for ({result.seconds:.0f} s in all)"
    )
    out.print(str(result.picture))


# --- evaluation: eval, report --------------------------------------------------------------------------------


@app.command(name="eval", rich_help_panel="Evaluation")
def eval_(
    targets: Annotated[list[Path], typer.Argument(help="A run folder (every checkpoint, plus step 0) or embedding "
                                                  "files.", metavar="RUN_DIR|EMBEDDING...")],
    *,
    data: Annotated[Path | None, typer.Option("--data", "-d", help="The training pictures \\[default: the run's].",
                                              show_default=False)] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Hub id, diffusers folder, .ckpt/.safetensors "
                                              "file, or toy \\[default: the run's model].", show_default=False)] = None,
    init_word: Annotated[str | None, typer.Option("--init-word", "-i", help="The init word, for the baseline and "
                                                  "the text side \\[default: as recorded].", show_default=False)] = None,
    clip: Annotated[str, typer.Option("--clip", help="CLIP model (hub id or folder) for identity and editability; "
                                      "none skips it.")] = "openai/clip-vit-large-patch14",
    dino: Annotated[str, typer.Option("--dino", help="DINO model (hub id or folder) for a second identity score; "
                                      "none skips it.")] = "none",
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Images per prompt (seeds SEED, SEED+1, ...).")] = 4,
    seed: Annotated[int, typer.Option("--seed", "-S", help="The first seed.")] = 0,
    steps: Annotated[int, typer.Option("--steps", "-s", min=1, help="Denoising steps.")] = 50,
    cfg: Annotated[float, typer.Option("--cfg", "-C", help="Classifier-free guidance scale.")] = 7.5,
    margin: Annotated[float, typer.Option("--margin", min=0.0, max=1.0, help="Best step: the balance of identity "
                                          "and editability may fall this fraction below the best.")] = 0.1,
    device: _ImgDevice = None,
    copy_best: Annotated[Path | None, typer.Option("--copy-best", help="Write the best step's embedding here.",
                                                   show_default=False)] = None,
    force: ForceOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON object.")] = False,
) -> None:
    """Score an embedding, or every checkpoint of a run, and pick the best step. Example: textinv eval logs/cat_2024-01-01T10-00-00

    Generates SEEDS images of 'a photo of *' and of edit prompts ('* on a beach', 'a blue *', ...) for each checkpoint and the init word; identity is CLIP (and DINO) similarity to the training pictures, editability CLIP similarity to the prompt with * replaced by the init word. On --model toy the toy's judge scores both: the concept in 'a photo of *', the asked colour in 'a photo of a <colour> *'.
    """
    from textinv.evaluation import evaluate as evaluation
    from textinv.progress import EvalProgress

    settings = evaluation.EvalSettings(seeds=seeds, seed=seed, steps=steps, cfg=cfg, margin=margin,
                                       clip=None if clip == "none" else clip, dino=None if dino == "none" else dino)
    quiet_libraries(state["verbose"])
    with user_errors():
        if copy_best:
            evaluation.check_copy_best(copy_best, force=force)
        result = evaluation.evaluate(targets, data=data, model=model, init_word=init_word, settings=settings,
                                     device=device, reporter=EvalProgress(err, quiet=state["quiet"]))
        written = evaluation.copy_best(result, copy_best, force=force) if copy_best else None
    for note in result.notes:
        info(f"note: {escape(note)}")
    if as_json:
        print_json(result.to_json())
    else:
        print_eval(result)
    if written:
        info(f"wrote {written} ({result.best.label})")


@app.command(rich_help_panel="Evaluation")
def report(
    run_dir: Annotated[Path, typer.Argument(help="The run folder (logs/<name>_<timestamp>).")],
    *,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="The HTML file \\[default: "
                                                "RUN_DIR/report.html].", show_default=False)] = None,
) -> None:
    """Write one self-contained HTML page about a run: config, loss curves, samples over steps, eval table.

    Example: textinv report logs/cat_2024-01-01T10-00-00
    """
    from textinv.evaluation.report import write_report

    with user_errors():
        path = write_report(run_dir, output)
    out.print(str(path), markup=False)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # outside a command body
        sys.exit(130)
