"""The command line as a user meets it: help, version, errors, and the embedding commands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from textinv import __version__
from textinv.cli import app
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import load_embedding, save_embedding

from .test_embeddings import REAL

runner = CliRunner()

COMMANDS = ["train", "generate", "img2img", "merge", "convert", "fetch", "inspect", "demo"]


def test_help_lists_every_subcommand():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for command in COMMANDS:
        assert command in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"textinv {__version__}"


def test_python_m_textinv_runs():
    proc = subprocess.run([sys.executable, "-m", "textinv", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"textinv {__version__}"


def test_usage_error_exits_2():
    result = runner.invoke(app, ["convert"])
    assert result.exit_code == 2


def test_user_error_is_one_line_without_traceback(tmp_path):
    missing = tmp_path / "missing.pt"
    result = runner.invoke(app, ["convert", str(missing), str(tmp_path / "out.bin")])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.pt: no such file" in lines[0]
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["--debug", "convert", str(tmp_path / "missing.pt"), str(tmp_path / "o.bin")])
    assert result.exit_code != 0
    assert result.exception is not None and "no such file" in str(result.exception)


# --- inspect ---------------------------------------------------------------------------------------------------


def test_inspect_json_reads_every_real_file(real_embeddings):
    files = [str(real_embeddings / name) for name in sorted(REAL)]
    result = runner.invoke(app, ["inspect", "--json", *files])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(files)
    for name, row in zip(sorted(REAL), rows, strict=True):
        fmt, family, shapes = REAL[name]
        assert (row["format"], row["family"]) == (fmt, family)
        assert [(t["vectors"], t["dim"], t.get("dim_2")) for t in row["tokens"]] == shapes


def test_inspect_table_and_unsupported_file(real_embeddings):
    result = runner.invoke(
        app,
        ["inspect", str(real_embeddings / "a1111_bad-hands-5.pt"),
         str(real_embeddings / "t5xxl_T5-CharDetail_a1111_weighted.safetensors")],
    )
    assert result.exit_code == 1
    assert "format a1111-pt" in result.stdout and "family SD1.x" in result.stdout and "step 1419" in result.stdout
    assert "a1111_bad-hands-5" in result.stdout and "768" in result.stdout
    assert "T5-XXL" in result.stderr


# --- convert ---------------------------------------------------------------------------------------------------


def test_convert_follows_extension_and_to(real_embeddings, tmp_path):
    src = real_embeddings / "a1111_bad-hands-5.pt"
    out = tmp_path / "bad-hands-5.safetensors"
    result = runner.invoke(app, ["convert", str(src), str(out), "--token", "<bad-hands>"])
    assert result.exit_code == 0, result.output
    back = load_embedding(out)
    assert back.source_format == "diffusers-safetensors" and back.tokens[0].name == "<bad-hands>"
    assert torch.equal(back.tokens[0].vectors, load_embedding(src).tokens[0].vectors)
    assert back.step == 1419 and back.base_model_hash == "5d2f8777af"  # metadata travels

    kohya = tmp_path / "bad-hands-5-kohya.safetensors"
    assert runner.invoke(app, ["convert", str(src), str(kohya), "--to", "kohya"]).exit_code == 0
    assert load_embedding(kohya).source_format == "kohya"


def test_convert_refuses_to_overwrite_without_force(real_embeddings, tmp_path):
    src = real_embeddings / "a1111_eyeliner2.pt"
    out = tmp_path / "e.bin"
    assert runner.invoke(app, ["convert", str(src), str(out)]).exit_code == 0
    again = runner.invoke(app, ["convert", str(src), str(out)])
    assert again.exit_code == 1 and "already exists; pass --force" in again.stderr
    assert runner.invoke(app, ["convert", str(src), str(out), "--force"]).exit_code == 0


def test_convert_of_a_multi_token_file_to_a_single_token_format(tmp_path):
    both = save_embedding(
        Embedding([Token("<a>", torch.ones(1, 8)), Token("<b>", torch.zeros(2, 8))]), tmp_path / "both.pt"
    )
    bad = runner.invoke(app, ["convert", str(both), str(tmp_path / "x.png")])
    assert bad.exit_code == 1 and "holds one token but this embedding has 2" in bad.stderr
    good = runner.invoke(app, ["convert", str(both), str(tmp_path / "b.png"), "--token", "<b>"])
    assert good.exit_code == 0, good.output
    assert torch.equal(load_embedding(tmp_path / "b.png").tokens[0].vectors, torch.zeros(2, 8))
    renamed = runner.invoke(app, ["convert", str(both), str(tmp_path / "r.pt"), "--token", "<a>=<c>"])
    assert renamed.exit_code == 0
    assert [t.name for t in load_embedding(tmp_path / "r.pt").tokens] == ["<c>", "<b>"]


# --- merge -----------------------------------------------------------------------------------------------------


@pytest.fixture
def two_stars(tmp_path):
    a = save_embedding(Embedding([Token("*", torch.ones(1, 8))]), tmp_path / "a.pt")
    b = save_embedding(Embedding([Token("*", torch.full((2, 8), 2.0))]), tmp_path / "b.bin")
    return a, b


def test_merge_conflict_error_rename_skip(two_stars, tmp_path):
    a, b = two_stars
    out = tmp_path / "m.pt"
    clash = runner.invoke(app, ["merge", str(a), str(b), "-o", str(out)])
    assert clash.exit_code == 1 and "a.pt" in clash.stderr and "b.bin" in clash.stderr
    assert not out.exists()
    renamed = runner.invoke(app, ["merge", str(a), str(b), "-o", str(out), "--on-conflict", "rename"])
    assert renamed.exit_code == 0, renamed.output
    merged = load_embedding(out)
    assert [t.name for t in merged.tokens] == ["*", "*_2"]
    assert torch.equal(merged.token("*_2").vectors, torch.full((2, 8), 2.0))
    skipped = runner.invoke(app, ["merge", str(a), str(b), "-o", str(tmp_path / "s.safetensors"), "--on-conflict", "skip"])
    assert skipped.exit_code == 0
    assert [t.name for t in load_embedding(tmp_path / "s.safetensors").tokens] == ["*"]


def test_merge_ask_never_waits_without_a_terminal(two_stars, tmp_path):
    a, b = two_stars
    result = runner.invoke(app, ["merge", str(a), str(b), "-o", str(tmp_path / "m.pt"), "--on-conflict", "ask"])
    assert result.exit_code == 1 and "needs a terminal" in result.stderr


def test_merge_of_different_families_is_refused(real_embeddings, tmp_path):
    result = runner.invoke(
        app,
        ["merge", str(real_embeddings / "a1111_eyeliner2.pt"), str(real_embeddings / "a1111-sd2_dgtlv2.pt"),
         "-o", str(tmp_path / "m.pt")],
    )
    assert result.exit_code == 1 and "different widths" in result.stderr


# --- convert/merge --for and --split ----------------------------------------------------------------------------


@pytest.mark.parametrize(("tool", "written", "word"), [
    ("a1111", "my_cat.pt", "my_cat"),
    ("invokeai", "my_cat.pt", "<my_cat>"),
    ("comfyui", "my_cat.safetensors", "embedding:my_cat"),
    ("kohya", "my_cat.safetensors", "my_cat"),
    ("diffusers", "my_cat.safetensors", "<cat>"),
])
def test_convert_for_a_tool_writes_its_layout_and_prints_the_trigger_word(tmp_path, tool, written, word):
    src = save_embedding(Embedding([Token("<cat>", torch.ones(2, 8))]), tmp_path / "src.bin")
    result = runner.invoke(app, ["convert", str(src), str(tmp_path / "out" / "my_cat"), "--for", tool])
    assert result.exit_code == 0, result.output
    assert f"use {word} in the prompt" in result.stdout
    assert torch.equal(load_embedding(tmp_path / "out" / written).tokens[0].vectors, torch.ones(2, 8))


def test_convert_for_refuses_a_mismatched_extension_and_a_second_choice(tmp_path):
    src = save_embedding(Embedding([Token("<cat>", torch.ones(2, 8))]), tmp_path / "src.bin")
    result = runner.invoke(app, ["convert", str(src), str(tmp_path / "x.safetensors"), "--for", "a1111"])
    assert result.exit_code == 1 and "--for a1111 writes a .pt file; name the output x.pt" in result.stderr
    both = runner.invoke(app, ["convert", str(src), str(tmp_path / "x.pt"), "--for", "a1111", "--to", "pt"])
    assert both.exit_code == 2 and "give one" in both.stderr and not (tmp_path / "x.pt").exists()


def test_merge_to_a_one_token_format_says_how_to_split_and_split_works(tmp_path, two_stars):
    a, b = two_stars
    refused = runner.invoke(app, ["merge", str(a), str(b), "-o", str(tmp_path / "m.safetensors"),
                                  "--on-conflict", "rename"])
    assert refused.exit_code == 1 and "--split" in refused.stderr and not (tmp_path / "m.safetensors").exists()
    split = runner.invoke(app, ["merge", str(a), str(b), "-o", str(tmp_path / "m.safetensors"),
                                "--on-conflict", "rename", "--split"])
    assert split.exit_code == 0, split.output
    assert load_embedding(tmp_path / "m-2.safetensors").tokens[0].name == "*_2"
    assert torch.equal(load_embedding(tmp_path / "m-2.safetensors").tokens[0].vectors, torch.full((2, 8), 2.0))
    assert load_embedding(tmp_path / "m-token1.safetensors").tokens[0].name == "*"


def test_malformed_metadata_is_one_warning_line(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"<cat>": torch.ones(1, 8)}, str(path), metadata={"textinv.placeholders": "[not json"})
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"warning: {path}: ignored the malformed metadata field 'textinv.placeholders'"]


# --- train's flags and usage errors ---------------------------------------------------------------------------


def test_the_output_folder_is_out_everywhere_and_old_spellings_still_work():
    import re

    for command in ("train", "generate", "img2img", "fetch", "demo"):
        res = runner.invoke(app, [command, "--help"], terminal_width=200)
        text = re.sub(r"\x1b\[[0-9;]*m", "", res.output)
        assert re.search(r"--out\b", text) and "-o" in text, command
        assert "--output-dir" not in text and "--output " not in text, command


def test_train_without_a_folder_or_with_a_missing_one_is_a_usage_error(tmp_path):
    res = runner.invoke(app, ["train", "--init-word", "cat"])
    assert res.exit_code == 2 and "pass a folder of images" in res.output
    res = runner.invoke(app, ["train", str(tmp_path / "nope"), "--init-word", "cat"])
    assert res.exit_code == 2 and "nope: no such folder" in res.output


def _images(folder):
    from tests.test_train import make_images

    return make_images(folder)


def test_an_extreme_learning_rate_is_one_line_and_writes_nothing(tmp_path):
    images = _images(tmp_path / "cat")
    res = runner.invoke(app, ["train", str(images), "--init-word", "cat", "--model", "toy", "--out",
                              str(tmp_path / "logs"), "--set", "optim.learning_rate=1e38"])
    assert res.exit_code == 1 and "`optim.learning_rate` is 1e+38" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "logs").exists()


def _tiny_run_args(tmp_path, model, *extra):
    return ["train", "cat", "--init-word", "cat", "--model", str(model), "--max-steps", "2", "--set",
            "data.resolution=32", "--set", "log.image_every=0", "--set", "log.save_every=1", *extra]


def test_resume_works_from_another_working_directory(tmp_path, tiny_model_dir, monkeypatch):
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    _images(start / "cat")
    elsewhere.mkdir()
    monkeypatch.chdir(start)
    res = runner.invoke(app, _tiny_run_args(tmp_path, tiny_model_dir, "--output-dir", "logs"))  # the old spelling
    assert res.exit_code == 0, res.output
    (run_dir,) = (start / "logs").iterdir()
    monkeypatch.chdir(elsewhere)
    res = runner.invoke(app, ["train", "--resume", str(run_dir), "--max-steps", "3"])
    assert res.exit_code == 0, res.output
    assert load_embedding(run_dir / "embeddings" / "cat.pt").step == 3
    # a folder moved away since: one line that says so
    (start / "cat").rename(start / "cat-moved")
    res = runner.invoke(app, ["train", "--resume", str(run_dir), "--max-steps", "4"])
    assert res.exit_code == 1 and "does not exist; was it moved?" in res.output
