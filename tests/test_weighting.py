"""Strength at use time (issue 21): AUTOMATIC1111's prompt weights and long prompts in generate/img2img/dream>,
and `textinv convert --strength`."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from textinv.cli import app
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import load_embedding, save_embedding
from textinv.generation.weighting import CHUNK, chunks, encode_prompts, parse_weights, prompt_arguments

runner = CliRunner()


# --- the parser: AUTOMATIC1111's rules (modules/prompt_parser.py, parse_prompt_attention's doctests) ------------


@pytest.mark.parametrize("text, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.1 * 1.1 * 1.3), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)]),
    ("a photo of (*:0.7)", [("a photo of ", 1.0), ("*", 0.7)]),
    ("[*]", [("*", 1 / 1.1)]),
    ("a cat BREAK a dog", [("a cat", 1.0), ("BREAK", None), ("a dog", 1.0)]),
    ("time: 3:30", [("time: 3:30", 1.0)]),  # a colon is text unless it ends (text:weight)
    ("", [("", 1.0)]),
])
def test_weights_parse_as_automatic1111_reads_them(text, expected):
    got = parse_weights(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


# --- encoding ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model_dir):
    from textinv.models.loading import load_pipeline

    return load_pipeline(str(tiny_model_dir))


def test_a_weight_scales_its_tokens_text_encoder_outputs_and_keeps_the_chunk_mean(tiny_pipe):
    """`(cat:0.7)`: the text encoder's output vectors of `cat`'s tokens times 0.7, then the whole 77-token chunk
    rescaled to its mean before weighting (AUTOMATIC1111's default emphasis); the learned input vectors and the
    other tokens' outputs are not otherwise changed."""
    tok, te = tiny_pipe.tokenizer, tiny_pipe.text_encoder
    ids = tok("a photo of cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    cat = ids[0].tolist().index(tok.convert_tokens_to_ids("cat</w>"))
    norm = next(m for name, m in te.named_modules() if name.endswith("final_layer_norm"))
    saved = norm.bias.detach().clone()
    try:
        with torch.no_grad():  # a last layer norm with a bias, as CLIP's: the chunk's mean is not zero
            norm.bias.copy_(0.3 + torch.rand(saved.shape, generator=torch.Generator().manual_seed(0)))
            z = te(ids)[0]
        expected = z.clone()
        expected[:, cat] *= 0.7
        expected *= z.mean() / expected.mean()
        got = encode_prompts(tiny_pipe, "a photo of (cat:0.7)", "")["prompt_embeds"]
        assert got.shape == z.shape
        assert torch.allclose(got, expected, atol=1e-6)
        assert got.mean() == pytest.approx(float(z.mean()), rel=1e-5)
        # without weights the embeddings are the plain encoding, exactly
        assert torch.equal(encode_prompts(tiny_pipe, "a photo of cat", "")["prompt_embeds"], z)
    finally:
        with torch.no_grad():
            norm.bias.copy_(saved)
    # a layer norm without bias (the tiny and toy models'): every token's output has mean 0, so the chunk's mean
    # is a rounding error and is not "restored"; only the weighted tokens change
    with torch.no_grad():
        z = te(ids)[0]
    expected = z.clone()
    expected[:, cat] *= 0.7
    got = encode_prompts(tiny_pipe, "a photo of (cat:0.7)", "")["prompt_embeds"]
    assert torch.allclose(got, expected, atol=1e-6)


def test_plain_prompts_go_to_the_pipeline_as_text(tiny_pipe):
    assert prompt_arguments(tiny_pipe, "a photo of cat", "") == {"prompt": "a photo of cat", "negative_prompt": None}
    assert "prompt_embeds" in prompt_arguments(tiny_pipe, "a photo of cat", "(dog:1.3)")


def test_a_long_prompt_is_encoded_75_tokens_at_a_time(tiny_pipe):
    long = " ".join(["a photo of the cat"] * 40)  # 200 tokens
    parts = chunks(tiny_pipe, tiny_pipe.tokenizer, long)
    assert [len(ids) for ids, _ in parts] == [77, 77, 77]
    assert sum(i not in (tiny_pipe.tokenizer.bos_token_id, tiny_pipe.tokenizer.eos_token_id,
                         tiny_pipe.tokenizer.pad_token_id) for ids, _ in parts for i in ids) == 200
    kwargs = prompt_arguments(tiny_pipe, long, "blurry")
    assert kwargs["prompt_embeds"].shape[1] == kwargs["negative_prompt_embeds"].shape[1] == 3 * (CHUNK + 2)
    # BREAK starts a new chunk
    assert len(chunks(tiny_pipe, tiny_pipe.tokenizer, "a cat BREAK a dog")) == 2


def test_a_multi_vector_placeholder_shares_its_weight(tiny_pipe, tmp_path):
    from textinv.models.embeddings import add_embeddings

    emb = Embedding([Token("<two>", torch.randn(2, 32))])
    add_embeddings(tiny_pipe, [(save_embedding(emb, tmp_path / "two.pt"), emb)])
    ((ids, weights),) = chunks(tiny_pipe, tiny_pipe.tokenizer, "a photo of (<two>:0.5)")
    two = tiny_pipe.tokenizer.convert_tokens_to_ids(["<two>", "<two>_1"])
    assert [weights[ids.index(i)] for i in two] == [0.5, 0.5]


def test_sdxl_weights_both_encoders_and_gives_the_pooled_embedding(tiny_sdxl_dir):
    from textinv.models.loading import load_pipeline

    pipe = load_pipeline(str(tiny_sdxl_dir))
    kwargs = prompt_arguments(pipe, "a (photo:1.2) of " + "cat " * 80, "")
    assert kwargs["prompt_embeds"].shape == (1, 2 * 77, 32 + 64)
    assert kwargs["pooled_prompt_embeds"].shape == (1, 64)
    assert not kwargs["negative_prompt_embeds"].any()  # force_zeros_for_empty_prompt, as the SDXL pipeline
    images = pipe(**kwargs, num_inference_steps=2, output_type="np").images
    assert images.shape[0] == 1


def test_generate_takes_weights_and_long_prompts_and_keeps_the_prompt_as_typed(tiny_model_dir, tmp_path):
    from textinv.generation.metadata import read_parameters

    prompt = "a photo of (cat:0.6), " + " ".join(["the dog"] * 50)  # no end space: PNG readers strip it (issue 24)
    res = runner.invoke(app, ["generate", prompt, "--model", str(tiny_model_dir), "-n", "1", "-s", "2",
                              "--seed", "3", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    (made,) = [json.loads(line) for line in res.stdout.splitlines()]
    assert made["prompt"] == prompt
    from PIL import Image

    assert read_parameters(made["path"])["Prompt"] == prompt
    plain = runner.invoke(app, ["generate", "a photo of cat, " + " ".join(["the dog"] * 50), "--model", str(tiny_model_dir),
                                "-n", "1", "-s", "2", "--seed", "3", "--out", str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output
    import numpy as np

    a = np.asarray(Image.open(made["path"]), dtype=float)
    b = np.asarray(Image.open(next((tmp_path / "plain").glob("*.png"))), dtype=float)
    assert np.abs(a - b).max() > 0  # the weight changed the picture


# --- convert --strength ------------------------------------------------------------------------------------------


def _trained_file(tiny_model_dir, tmp_path, *, init_word: str | None = "cat", suffix=".safetensors"):
    g = torch.Generator().manual_seed(1)
    emb = Embedding([Token("<c>", torch.randn(2, 32, generator=g))], name="c", step=10,
                    init_words={"<c>": init_word} if init_word else {})
    return save_embedding(emb, tmp_path / f"c{suffix}")


def _init(tiny_model_dir, n=2):
    from textinv.models.loading import load_pipeline
    from textinv.models.tokens import init_vectors

    pipe = load_pipeline(str(tiny_model_dir))
    vectors, _ = init_vectors(pipe.tokenizer, pipe.text_encoder.get_input_embeddings().weight, "cat", n)
    return vectors


@pytest.mark.parametrize("strength", ["0", "1", "0.6"])
def test_convert_strength_blends_toward_the_init_word(tiny_model_dir, tmp_path, strength):
    src = _trained_file(tiny_model_dir, tmp_path)
    out = tmp_path / f"out-{strength}.safetensors"
    res = runner.invoke(app, ["convert", str(src), str(out), "--strength", strength, "--model", str(tiny_model_dir)])
    assert res.exit_code == 0, res.output
    learned, init = load_embedding(src).tokens[0].vectors, _init(tiny_model_dir)
    written = load_embedding(out)
    s = float(strength)
    assert torch.allclose(written.tokens[0].vectors, init + s * (learned - init), atol=1e-6)
    if s == 0:
        assert torch.allclose(written.tokens[0].vectors, init, atol=1e-7)
    if s == 1:
        assert torch.equal(written.tokens[0].vectors, learned)
    assert written.extra["strength"] == f"{s:g}" and written.extra["strength_toward"] == "cat"


def test_convert_strength_needs_a_model_and_an_init_word(tiny_model_dir, tmp_path):
    src = _trained_file(tiny_model_dir, tmp_path, init_word=None, suffix=".pt")
    out = tmp_path / "o.pt"
    no_model = runner.invoke(app, ["convert", str(src), str(out), "--strength", "0.5"])
    assert no_model.exit_code == 2 and "pass --model" in no_model.stderr
    no_word = runner.invoke(app, ["convert", str(src), str(out), "--strength", "0.5", "--model", str(tiny_model_dir)])
    assert no_word.exit_code == 2 and "pass --init-word WORD" in no_word.stderr
    bad = runner.invoke(app, ["convert", str(src), str(out), "--strength", "1.5", "--model", str(tiny_model_dir)])
    assert bad.exit_code == 2 and "--strength 1.5: must be between 0" in bad.stderr
    ok = runner.invoke(app, ["convert", str(src), str(out), "--strength", "0", "--model", str(tiny_model_dir),
                             "--init-word", "cat"])
    assert ok.exit_code == 0, ok.output
    assert torch.allclose(load_embedding(out).tokens[0].vectors, _init(tiny_model_dir), atol=1e-7)
    assert not (tmp_path / "never.pt").exists()
