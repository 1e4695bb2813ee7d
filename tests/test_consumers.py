"""What the format records say about the tools (who loads each written file, with which word, after which step)
against the tools' loading code: tests/consumers.py for AUTOMATIC1111, InvokeAI, ComfyUI and kohya, diffusers' own
`load_textual_inversion` on the tiny pipelines. The README's tables are generated from the records, so this is what
keeps them true."""

from __future__ import annotations

import pytest
import torch

from tests import consumers
from textinv.formats import FOR_TOOL, TOOLS
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import save_embedding, write_files
from textinv.formats.registry import FORMATS, WRITABLE


def _emb(token: str, n: int, widths: tuple[int, int | None]) -> Embedding:
    g = torch.Generator().manual_seed(n + len(token))
    second = torch.randn(n, widths[1], generator=g) if widths[1] else None
    return Embedding([Token(token, torch.randn(n, widths[0], generator=g), second)], name="cat", step=3)


def _writable(name: str, emb: Embedding) -> bool:
    return not (emb.is_sdxl and name in ("paper-pt", "a1111-png", "sd-concepts-folder"))


def _same(got: consumers.Loaded, emb: Embedding) -> bool:
    tok = emb.tokens[0]
    if not torch.equal(got.vectors.float(), tok.vectors):
        return False
    return tok.vectors_2 is None or (got.vectors_2 is not None and torch.equal(got.vectors_2.float(), tok.vectors_2))


CASES = [(token, n, widths) for token in ("<cat>", "*") for n in (1, 3) for widths in ((768, None), (768, 1280))]


@pytest.mark.parametrize(("token", "n", "widths"), CASES)
def test_the_records_name_exactly_the_tools_that_load_each_file_and_their_words(tmp_path, token, n, widths):
    emb = _emb(token, n, widths)
    for name in WRITABLE:
        if not _writable(name, emb):
            continue
        path = save_embedding(emb, tmp_path / f"my_cat-{name}{FORMATS[name].extension}", format=name)
        claimed = {t: u.trigger for t, u in FORMATS[name].usage(path, emb).items() if t in consumers.TOOLS}
        loaded = {t: tool(path, emb.is_sdxl) for t, tool in consumers.TOOLS.items()}
        found = {t: got.trigger for t, got in loaded.items() if got is not None and _same(got, emb)}
        assert claimed == found, (name, token, n, widths)


def test_a_multi_token_paper_file_is_refused_by_a1111_and_read_as_its_first_token_elsewhere(tmp_path):
    """Why several tokens are written only as paper-pt: AUTOMATIC1111 refuses the file; InvokeAI takes the first
    token and warns (v6.13.8 invokeai/backend/textual_inversion.py:39-45); ComfyUI and kohya take it without a word."""
    emb = Embedding([Token("<a>", torch.ones(1, 768)), Token("<b>", torch.zeros(1, 768))])
    path = save_embedding(emb, tmp_path / "two.pt", format="paper-pt")
    assert consumers.a1111(path, False) is None
    for tool in ("invokeai", "comfyui", "kohya"):
        assert torch.equal(consumers.TOOLS[tool](path, False).vectors, torch.ones(1, 768)), tool


def test_a_png_embedding_loads_only_in_automatic1111_by_its_name(tmp_path):
    emb = _emb("<cat>", 2, (768, None))
    path = save_embedding(emb, tmp_path / "file-name.png")
    assert consumers.a1111(path, False).trigger == "<cat>"  # an image's `name`, not the file's
    assert [t for t, tool in consumers.TOOLS.items() if t != "a1111" and tool(path, False)] == []


# --- diffusers' own loader ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipes(tiny_model_dir, tiny_sdxl_dir):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return {False: lambda: StableDiffusionPipeline.from_pretrained(tiny_model_dir),
            True: lambda: StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)}


def _load_in_diffusers(pipe, path, usage) -> str:
    """Do what the record says diffusers needs (its printed step, or one plain call); returns the trigger."""
    if usage.step:
        exec(usage.step, {"pipe": pipe})  # noqa: S102 - textinv's own printed instructions, run as a user would
    else:
        pipe.load_textual_inversion(str(path))
    return usage.trigger


def _rows(pipe, word: str, n: int, encoder: str = "") -> torch.Tensor:
    tokenizer, text_encoder = getattr(pipe, f"tokenizer{encoder}"), getattr(pipe, f"text_encoder{encoder}")
    words = [word] + [f"{word}_{i}" for i in range(1, n)]
    ids = tokenizer.convert_tokens_to_ids(words)
    return text_encoder.get_input_embeddings().weight[ids].detach()


@pytest.mark.parametrize("token", ["<cat>", "*"])
@pytest.mark.parametrize("sdxl", [False, True])
def test_diffusers_loads_each_file_as_the_record_says(tmp_path, monkeypatch, pipes, token, sdxl):
    monkeypatch.chdir(tmp_path)  # the printed steps name the file, as a user in its folder would run them
    n = 2
    emb = _emb(token, n, (32, 64) if sdxl else (32, None))
    for name in WRITABLE:
        if not _writable(name, emb):
            continue
        path = save_embedding(emb, tmp_path / f"my_cat-{name}{FORMATS[name].extension}", format=name)
        usage = FORMATS[name].usage(path, emb).get("diffusers")
        pipe = pipes[sdxl]()
        if usage is None:  # the record says diffusers does not load it: it refuses, or loads something else
            with pytest.raises(Exception):  # noqa: B017 - diffusers raises ValueError, KeyError or UnpicklingError
                pipe.load_textual_inversion(str(path), token="<x>")
            continue
        word = _load_in_diffusers(pipe, path, usage)
        assert torch.equal(_rows(pipe, word, n), emb.tokens[0].vectors), (name, token)
        if sdxl:
            assert torch.equal(_rows(pipe, word, n, "_2"), emb.tokens[0].vectors_2), name


def test_diffusers_refuses_a_star_that_for_diffusers_renames(tmp_path, pipes):
    """The bug: `*` is in CLIP's vocabulary, so diffusers refuses a file keyed `*`; `--for diffusers` and
    `--for sd-concepts` write `<stem>` instead and say so."""
    emb = _emb("*", 1, (32, None))
    plain = save_embedding(emb, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match=r"Token \* already in tokenizer vocabulary"):
        pipes[False]().load_textual_inversion(str(plain))
    for tool in ("diffusers", "sd-concepts"):
        (written,) = write_files(emb, tmp_path / f"my_cat-{tool}", for_tool=tool)
        assert written.triggers[tool] == f"<my_cat-{tool}>" and written.embedding.tokens[0].name == f"<my_cat-{tool}>"
        assert "a character CLIP's vocabulary already has" in written.notes[0]
        pipe = pipes[False]()
        pipe.load_textual_inversion(str(written.path))
        assert torch.equal(_rows(pipe, f"<my_cat-{tool}>", 1), emb.tokens[0].vectors)


def test_for_diffusers_on_sdxl_prints_the_two_calls_with_the_outputs_token(tmp_path, monkeypatch, pipes):
    monkeypatch.chdir(tmp_path)
    emb = _emb("*", 2, (32, 64))
    (written,) = write_files(emb, tmp_path / "xl", for_tool="diffusers")
    step = written.steps["diffusers"]
    assert step.count("pipe.load_textual_inversion(") == 2 and 'token="<xl>"' in step and "xl.safetensors" in step
    pipe = pipes[True]()
    exec(step, {"pipe": pipe})  # noqa: S102
    assert torch.equal(_rows(pipe, "<xl>", 2), emb.tokens[0].vectors)
    assert torch.equal(_rows(pipe, "<xl>", 2, "_2"), emb.tokens[0].vectors_2)


def test_every_for_tool_prints_the_word_that_tool_uses(tmp_path, real_embeddings):
    """For a webui .pt (its `name` differs from its file name) and for a `*` file: each `--for` word is the one the
    tool's code would use for the file written."""
    from textinv.formats.files import load_embedding

    webui = load_embedding(real_embeddings / "a1111_bad-hands-5.pt")  # name 'bad-hands-5'
    assert webui.name == "bad-hands-5" and webui.tokens[0].name == "a1111_bad-hands-5"  # the webui's word: the stem
    star = _emb("*", 2, (768, None))
    for src, label in ((webui, "webui"), (star, "star")):
        for tool in TOOLS:
            (w,) = write_files(src, tmp_path / label / f"out_{tool}", for_tool=tool)
            if tool in ("diffusers", "sd-concepts") and label == "webui":  # no tokenizer here to vouch for it
                assert w.notes == [f"diffusers' load_textual_inversion refuses a token CLIP's vocabulary already has, "
                                   f"as it has many plain words but no <word>: the file's token is <out_{tool}>, "
                                   "not a1111_bad-hands-5"]
            if tool in consumers.TOOLS:
                assert consumers.TOOLS[tool](w.path, False).trigger == w.triggers[tool], (label, tool)
            elif tool == "onetrainer":  # its files hold no token: the word is the placeholder set in OneTrainer
                assert w.triggers[tool] == w.embedding.tokens[0].name, tool  # (any text, docs/EmbeddingTraining.md)
            else:  # diffusers and the concepts notebook take the token in the file
                assert w.triggers[tool] == w.embedding.tokens[0].name and w.triggers[tool].startswith("<"), tool
            assert FOR_TOOL[tool] == w.format
