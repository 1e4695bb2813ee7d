"""The generation metadata in PNGs (textinv/png_metadata.py), read back by the real readers from PyPI."""

from __future__ import annotations

import hashlib
import io
import json
import shlex

import pytest
from PIL import Image, PngImagePlugin

from textinv.generation.metadata import (
    a1111_parameters,
    checkpoint_hash,
    dream_command,
    invoke_metadata,
    png_info,
)
from textinv.generation.sampling import GenerationParams

sd_parsers = pytest.importorskip("sd_parsers", reason="pip install 'textinv[test]' for sd-parsers")

PROMPTS = [
    ('a "quoted" cat: (masterpiece:1.2), <my-cat>', 'blurry, "bad" hands'),
    ("a photo of <cat-toy> (on a table)", ""),
    ("colons: a: b, c", "x:y"),
]


def _params(prompt, negative, model="sd15") -> GenerationParams:
    return GenerationParams(prompt=prompt, negative=negative, steps=20, cfg=7.5, seed=1234567, width=64, height=48,
                            sampler="Euler a", model=model)


def _parsed(info: PngImagePlugin.PngInfo):
    buf = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buf, format="PNG", pnginfo=info)
    buf.seek(0)
    return sd_parsers.ParserManager().parse(Image.open(buf))


def _only(key: str, p: GenerationParams) -> PngImagePlugin.PngInfo:
    """A PNG with one of the three chunks, so that the reader has to use that one."""
    text = {"Dream": dream_command(p), "sd-metadata": json.dumps(invoke_metadata(p))}[key]
    info = PngImagePlugin.PngInfo()
    info.add_text(key, text)
    return info


@pytest.mark.parametrize(("prompt", "negative"), PROMPTS)
def test_sd_parsers_reads_every_field_of_the_a1111_parameters(prompt, negative):
    info = _parsed(png_info(_params(prompt, negative)))
    assert info.generator.name == "AUTOMATIC1111"
    sampler = info.samplers[0]
    assert [x.value for x in sampler.prompts] == [prompt]
    assert [x.value for x in sampler.negative_prompts] == ([negative] if negative else [])
    assert sampler.name == "Euler a" and sampler.model.name == "sd15"
    assert sampler.parameters == {"cfg_scale": "7.5", "seed": "1234567", "steps": "20"}
    assert info.metadata["Size"] == "64x48"


@pytest.mark.parametrize(("prompt", "negative"), PROMPTS)
def test_sd_parsers_reads_the_negative_prompt_from_invokeai_sd_metadata(prompt, negative):
    info = _parsed(_only("sd-metadata", _params(prompt, negative)))
    assert info.generator.name == "INVOKEAI"
    sampler = info.samplers[0]
    assert [x.value for x in sampler.prompts] == [prompt]
    assert [x.value for x in sampler.negative_prompts] == ([negative] if negative else [])
    assert sampler.parameters["seed"] == 1234567 and sampler.parameters["steps"] == 20


@pytest.mark.parametrize(("prompt", "negative"), PROMPTS)
def test_dream_command_keeps_quoted_prompts_whole(prompt, negative):
    words = shlex.split(dream_command(_params(prompt, negative)))  # InvokeAI 2.x splits the command with shlex
    assert words[0] == (f"{prompt} [{negative}]" if negative else prompt)
    if '"' not in prompt + negative:  # sd-parsers reads the Dream prompt up to the first double quote
        info = _parsed(_only("Dream", _params(prompt, negative)))
        assert [x.value for x in info.samplers[0].prompts] == [prompt]


def test_model_hash_is_written_for_a_checkpoint_file(tmp_path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"weights" * 1000)
    expected = hashlib.sha256(ckpt.read_bytes()).hexdigest()[:10]
    assert checkpoint_hash(str(ckpt)) == expected
    assert f"Model hash: {expected}, Model: {ckpt}" in a1111_parameters(_params("a", "", model=str(ckpt)))
    info = _parsed(png_info(_params("a", "", model=str(ckpt))))
    assert info.samplers[0].model.hash == expected
    assert checkpoint_hash("runwayml/stable-diffusion-v1-5") is None
    assert "Model hash" not in a1111_parameters(_params("a", ""))
