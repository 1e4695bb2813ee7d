"""The generation metadata in PNGs (textinv/generation/metadata.py): each chunk read back exactly by every reader,
the real ones from PyPI (sd-parsers here, sd-prompt-reader in its own venv) and the ones written from InvokeAI's
and AUTOMATIC1111's code (tests/png_readers.py); a chunk they would misread is left out."""

from __future__ import annotations

import io
import json
import random
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from tests import png_readers
from textinv.generation.metadata import a1111_parameters, dream_command, invoke_metadata, left_out, png_info
from textinv.generation.sampling import GenerationParams

sd_parsers = pytest.importorskip("sd_parsers", reason="pip install 'textinv[test]' for sd-parsers")

ROOT = Path(__file__).resolve().parents[1]
READERS_PYTHON = ROOT / ".venv-readers" / "bin" / "python"  # `make readers`: sd-prompt-reader, which pins pillow 10.3

# (prompt, negative): the issue's pair first, then quotes, brackets, weights, colons and semicolons in each part
PROMPTS = [
    ('a "purple" cat', "blurry, [bad|worse], (ugly:1.3)"),
    ('a "quoted" cat: (masterpiece:1.2), <my-cat>', 'blurry, "bad" hands'),
    ("a photo of <cat-toy> (on a table)", ""),
    ("colons: a: b, c; d", "x:y; z"),
    ("a [red] cat", ""),
    ("a [red] cat", "blurry"),
    ("a cat ]", "low quality; (worst:1.4)"),
    ("(a cat:1.2), [dog:cat:0.5]", ""),
    ("a cat", "[blurry]"),
    ("a cat", "blurry ]"),
    ("", "blurry"),
    ("a cat", ""),
]
CHUNKS = ("parameters", "Dream", "sd-metadata")


def _params(prompt, negative, model="sd15", model_sha256=None) -> GenerationParams:
    return GenerationParams(prompt=prompt, negative=negative, steps=20, cfg=7.5, seed=1234567, width=64, height=48,
                            sampler="Euler a", model=model, model_sha256=model_sha256)


def _text(chunk: str, p: GenerationParams) -> str:
    return {"parameters": a1111_parameters, "Dream": dream_command,
            "sd-metadata": lambda p: json.dumps(invoke_metadata(p))}[chunk](p)


def _png_bytes(chunks: dict[str, str]) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, text in chunks.items():
        info.add_text(key, text)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _png(chunks: dict[str, str]) -> Image.Image:
    return Image.open(io.BytesIO(_png_bytes(chunks)))


def _sd_parsers(chunks: dict[str, str]) -> tuple[str, str] | None:
    """sd-parsers 0.6 (from PyPI): what it reads from a PNG holding these chunks."""
    try:
        info = sd_parsers.ParserManager().parse(_png(chunks))
    except Exception:
        return None
    if info is None:
        return None
    sampler = info.samplers[0]
    prompts, negatives = [x.value for x in sampler.prompts], [x.value for x in sampler.negative_prompts]
    if len(prompts) > 1 or len(negatives) > 1:
        return "\n".join(prompts), "\n".join(negatives)  # pieces it split apart: never equal to one prompt
    return (prompts or [""])[0], (negatives or [""])[0]


def _written_readers(chunk: str, text: str) -> dict[str, tuple[str, str] | None]:
    """The readers written from InvokeAI's and AUTOMATIC1111's code, on one chunk."""
    if chunk == "parameters":
        return {"AUTOMATIC1111 1.10.1": png_readers.a1111_parameters(text)[:2]}
    if chunk == "Dream":
        return {"InvokeAI 2.3": png_readers.invokeai23_dream(text)}  # InvokeAI 6 reads Dream only alone
    meta = json.loads(text)
    return {"InvokeAI 2.3": png_readers.invokeai23_sd_metadata(meta),
            "InvokeAI 6": png_readers.invokeai6_png({chunk: text})}


def _misreads(chunk: str, prompt: str, negative: str) -> list[str]:
    """The in-process readers that read `chunk` (written regardless of the rules) back wrong."""
    text = _text(chunk, _params(prompt, negative))
    found = {"sd-parsers 0.6": _sd_parsers({chunk: text}), **_written_readers(chunk, text)}
    return [name for name, got in found.items() if got != (prompt, negative)]


@pytest.mark.parametrize(("prompt", "negative"), PROMPTS)
def test_every_chunk_written_reads_back_exactly_in_every_reader(prompt, negative):
    p = _params(prompt, negative)
    skipped = left_out(p)
    for chunk in CHUNKS:
        if chunk not in skipped:
            assert _misreads(chunk, prompt, negative) == [], (chunk, prompt, negative)
    chunks = _png_chunks(p)
    assert set(chunks) == set(CHUNKS) - set(skipped)
    assert "Dream" not in chunks or "sd-metadata" in chunks  # InvokeAI 6 would read a lone Dream whole


def _png_chunks(p: GenerationParams) -> dict[str, str]:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=png_info(p))
    buf.seek(0)
    with Image.open(buf) as im:
        return {k: v for k, v in im.info.items() if k in CHUNKS}


def test_the_issues_prompt_keeps_a1111s_chunk_and_leaves_out_invokeais():
    """`a "purple" cat` with `blurry, [bad|worse], (ugly:1.3)`: sd-parsers cut the old Dream chunk at `a \\`, and
    InvokeAI ends the bracketed negative prompt at its first `]`, so both InvokeAI chunks are left out."""
    p = _params(*PROMPTS[0])
    assert set(left_out(p)) == {"Dream", "sd-metadata"}
    assert "bracket" in left_out(p)["sd-metadata"]
    assert "sd-parsers 0.6" in _misreads("Dream", *PROMPTS[0])
    assert {"InvokeAI 2.3", "InvokeAI 6"} <= set(_misreads("sd-metadata", *PROMPTS[0]))
    assert _sd_parsers(_png_chunks(p)) == PROMPTS[0]  # from `parameters`


@pytest.mark.parametrize(("prompt", "negative"), PROMPTS)
def test_a_chunk_is_left_out_only_when_a_reader_would_misread_it(prompt, negative):
    for chunk, why in left_out(_params(prompt, negative)).items():
        assert _misreads(chunk, prompt, negative), (chunk, why)


# Nasty prompts: the characters prompt syntax uses, and the markers the readers split at.
_PIECES = ["a", "cat", " ", ",", '"', "[", "]", "(", ")", ":", ";", "|", "\\", "<x>", "*", "(x:1.2)", "\n",
           "[bad|worse]", "Negative prompt:", "Steps: 1", "  ", "#", "-S 5"]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=8).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=_TEXT, negative=_TEXT)
def test_any_prompt_is_written_only_where_it_reads_back(prompt, negative):
    skipped = left_out(_params(prompt, negative))
    for chunk in CHUNKS:
        wrong = _misreads(chunk, prompt, negative)
        if chunk not in skipped:
            assert wrong == [], (chunk, prompt, negative, wrong)
        elif "Steps:" not in skipped[chunk]:  # that rule is sd-prompt-reader's, which runs in its own venv
            assert wrong, (chunk, prompt, negative, skipped[chunk])


def test_sd_prompt_reader_reads_every_chunk_written(tmp_path):
    """sd-prompt-reader 1.3.5 pins pillow 10.3 and a Tk GUI toolkit, so it runs from `make readers`' venv."""
    if not READERS_PYTHON.exists():
        pytest.skip("sd-prompt-reader is not installed: `make readers` builds .venv-readers with it")
    rng = random.Random(0)  # and 300 random nasty pairs, in one run of the reader
    pairs = PROMPTS + [tuple("".join(rng.choices(_PIECES, k=rng.randrange(8))) for _ in "pn") for _ in range(300)]
    files, expected = [], []
    for i, (prompt, negative) in enumerate(pairs):
        p = _params(prompt, negative)
        for chunk in CHUNKS:
            if chunk not in left_out(p):
                path = tmp_path / f"{i}-{chunk}.png"
                path.write_bytes(_png_bytes({chunk: _text(chunk, p)}))
                files.append(str(path))
                expected.append((prompt, negative))
    out = subprocess.run([str(READERS_PYTHON), str(ROOT / "interop" / "sd_prompt_reader_check.py"), *files],
                         capture_output=True, text=True, check=True)
    got = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(g["positive"], g["negative"]) for g in got] == expected


# --- the settings line ---------------------------------------------------------------------------------------


def test_sd_parsers_reads_every_setting_of_the_a1111_parameters():
    sha = "0123456789abcdef" * 4
    info = sd_parsers.ParserManager().parse(_png({"parameters": a1111_parameters(
        _params("a cat", "blurry", model="my model", model_sha256=sha))}))
    assert info.generator.name == "AUTOMATIC1111"
    sampler = info.samplers[0]
    assert sampler.name == "Euler a" and sampler.model.name == "my model" and sampler.model.hash == sha[:10]
    assert sampler.parameters == {"cfg_scale": "7.5", "seed": "1234567", "steps": "20"}
    assert info.metadata["Size"] == "64x48"


def test_a_model_name_with_commas_is_quoted_as_automatic1111_does():
    text = a1111_parameters(_params("a cat", "", model="v1-5, pruned: ema"))
    assert 'Model: "v1-5, pruned: ema"' in text
    assert png_readers.a1111_parameters(text)[2]["Model"] == "v1-5, pruned: ema"


def test_model_hashes_come_from_the_checkpoints_sha256():
    sha = "fedcba9876543210" * 4
    p = _params("a", "", model="sd-v1-5", model_sha256=sha)
    assert f"Model hash: {sha[:10]}, Model: sd-v1-5," in a1111_parameters(p)  # AUTOMATIC1111's short hash
    assert invoke_metadata(p)["model_hash"] == sha  # InvokeAI 2.3 writes the whole sha256
    no_file = _params("a", "", model="stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert "Model hash" not in a1111_parameters(no_file) and "model_hash" not in invoke_metadata(no_file)
