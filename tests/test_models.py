"""textinv.models: finding and loading models (folder, single file, hub cache) and adding embeddings to them."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import textinv
from tests.ldm_checkpoint import config_only_copy, ldm_state_dict
from textinv.errors import ConfigError, EmbeddingFormatError, ModelError
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import save_embedding
from textinv.models.embeddings import add_embeddings, check_prompt, find_embedding_files, load_embeddings
from textinv.models.info import ModelInfo
from textinv.models.loading import (
    as_img2img,
    as_txt2img,
    base_model_of,
    load_pipeline,
    resolve_device,
    resolve_dtype,
)
from textinv.models.source import DEFAULT_MODEL, resolve_source, toy_model_dir

DIM = 32  # the tiny pipeline's text width


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model_dir):
    return load_pipeline(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def single_files(tiny_model_dir, tmp_path_factory, tiny_pipe):
    """The tiny model as an original-layout .safetensors and .ckpt, plus a weightless config folder."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("single-file")
    sd = ldm_state_dict(tiny_pipe)
    save_file(sd, str(folder / "tiny.safetensors"))
    torch.save({"state_dict": sd, "global_step": 7}, folder / "tiny.ckpt")
    return {
        "safetensors": folder / "tiny.safetensors",
        "ckpt": folder / "tiny.ckpt",
        "config": config_only_copy(tiny_model_dir, folder / "config"),
    }


def _weights_equal(a, b) -> bool:
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        if set(sa) != set(sb) or any(not torch.equal(sa[k], sb[k]) for k in sa):
            return False
    return True


# --- devices and sources -----------------------------------------------------------------------------------


def test_device_and_dtype_follow_the_hardware():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", torch.device("cpu"))
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_sources_resolve_by_what_they_are(tmp_path, tiny_model_dir, monkeypatch):
    assert resolve_source(None) == ("hub", DEFAULT_MODEL)
    monkeypatch.setenv("TEXTINV_MODEL", "someone/their-model")
    assert resolve_source(None) == ("hub", "someone/their-model")
    assert resolve_source(tiny_model_dir) == ("folder", str(tiny_model_dir))
    with pytest.raises(ModelError, match=r"models/ldm/model.ckpt: no such file or folder"):
        resolve_source("models/ldm/model.ckpt")
    with pytest.raises(ModelError, match="not a diffusers model"):
        resolve_source(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelError, match="not a model file"):
        resolve_source(tmp_path / "notes.txt")


def test_toy_resolves_to_the_packaged_folder():
    folder = toy_model_dir()
    assert folder == Path(textinv.__file__).parent / "toy" / "model"
    if (folder / "model_index.json").is_file():
        assert resolve_source("toy") == ("toy", str(folder))
    else:
        with pytest.raises(ModelError, match="toy model is not in this install"):
            resolve_source("toy")


# --- loading -------------------------------------------------------------------------------------------------


def test_folder_loads_in_fp32_on_cpu_with_its_family(tiny_pipe, tiny_model_dir):
    assert tiny_pipe.device.type == "cpu" and tiny_pipe.dtype == torch.float32
    assert tiny_pipe.textinv.kind == "folder" and tiny_pipe.textinv.name == tiny_model_dir.name
    assert tiny_pipe.textinv.family == "unknown (dim 32)"


@pytest.mark.parametrize("kind", ["safetensors", "ckpt"])
def test_single_file_checkpoint_loads_the_same_weights(single_files, tiny_pipe, kind):
    pipe = load_pipeline(single_files[kind], model_config=single_files["config"], device="cpu")
    assert pipe.textinv.kind == "single-file" and pipe.textinv.name == "tiny"
    assert pipe.textinv.warnings == []  # a weights-only .ckpt needs no warning
    assert _weights_equal(pipe, tiny_pipe)


class _Trap:
    """Unpickling this would create a folder: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_ckpt_with_pickled_objects_loads_without_running_them(single_files, tiny_pipe, tmp_path):
    marker = tmp_path / "code-ran"
    sd = ldm_state_dict(tiny_pipe)
    ckpt = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": sd, "callbacks": {"ModelCheckpoint": _Trap(marker)}}, ckpt)
    with pytest.raises(pickle.UnpicklingError):  # weights_only refuses it: the stand-in path is needed
        torch.load(ckpt, weights_only=True)
    pipe = load_pipeline(ckpt, model_config=single_files["config"], device="cpu")
    assert not marker.exists()
    assert _weights_equal(pipe, tiny_pipe)
    assert len(pipe.textinv.warnings) == 1 and "skipped without running them" in pipe.textinv.warnings[0]
    assert "mkdir" in pipe.textinv.warnings[0]


def test_single_file_errors_are_one_clear_line(single_files, tmp_path):
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE=1 forbids fetching it; pass --model-config DIR") as e:
        load_pipeline(single_files["safetensors"], device="cpu")  # offline, no config anywhere
    assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match="not a diffusers model folder"):
        load_pipeline(single_files["ckpt"], model_config=tmp_path, device="cpu")
    broken = tmp_path / "half.ckpt"
    broken.write_bytes(single_files["ckpt"].read_bytes()[:5000])
    with pytest.raises(ModelError, match="truncated or not a torch checkpoint"):
        load_pipeline(broken, model_config=single_files["config"], device="cpu")


def test_uncached_hub_id_offline_says_so_and_suggests_toy():
    with pytest.raises(ModelError) as e:
        load_pipeline("nobody/no-such-model", device="cpu")
    message = str(e.value)
    assert "nobody/no-such-model is not in the Hugging Face cache" in message
    assert "HF_HUB_OFFLINE=1" in message and "--model toy" in message and "\n" not in message


def test_cached_hub_id_loads_offline(tiny_model_dir, tiny_pipe):
    """A model in the hub cache layout (models--org--name/snapshots/<sha>, refs/main) loads with no network."""
    cache = Path(os.environ["HF_HOME"]) / "hub" / "models--textinv--tiny"
    sha = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_model_dir, cache / "snapshots" / sha)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text(sha)
    pipe = load_pipeline("textinv/tiny", device="cpu")
    assert pipe.textinv.kind == "hub" and pipe.textinv.name == "textinv/tiny"
    assert _weights_equal(pipe, tiny_pipe)
    # what a trained embedding records of it: the hub id and the commit
    assert base_model_of(pipe, "ignored") == {
        "base_model": "textinv/tiny", "base_model_hash": None, "extra": {"base_model_revision": sha}}


def test_img2img_view_shares_modules(tiny_pipe):
    i2i = as_img2img(tiny_pipe)
    assert "Img2Img" in type(i2i).__name__
    assert i2i.text_encoder is tiny_pipe.text_encoder and i2i.textinv is tiny_pipe.textinv
    assert as_img2img(tiny_pipe) is i2i and as_txt2img(i2i) is tiny_pipe


# --- embeddings ----------------------------------------------------------------------------------------------


def _emb(name: str, n: int, seed: int, dim: int = DIM) -> Embedding:
    g = torch.Generator().manual_seed(seed)
    return Embedding([Token(name, torch.randn(n, dim, generator=g))], name=name.strip("<>*") or "star")


def _encode(pipe, prompt: str) -> torch.Tensor:
    embeds, _ = pipe.encode_prompt(prompt, torch.device("cpu"), 1, False)
    return embeds


def test_embedding_is_really_used(tiny_model_dir, tmp_path):
    """`a photo of *` with a 2-vector `*` encodes exactly as the plain prompt with those vectors put in by hand."""
    pipe = load_pipeline(tiny_model_dir, device="cpu")
    plain = load_pipeline(tiny_model_dir, device="cpu")
    star = _emb("*", 2, seed=1)
    path = tmp_path / "star.pt"
    path.write_bytes(b"stands in for the file; only its hash is read")
    assert add_embeddings(pipe, [(path, star)]) == ["*"]

    with_embedding = _encode(pipe, "a photo of *")

    # By hand, on an untouched model: tokens for "a photo of" + two slots, whose input embeddings are replaced
    # with the vectors before the transformer sees them.
    tok = plain.tokenizer
    ids = tok("a photo of", padding="max_length", max_length=tok.model_max_length).input_ids
    n_words = len(tok("a photo of").input_ids) - 1  # without the end token
    eos, pad = ids[n_words], ids[-1]
    ids = ids[:n_words] + [eos, eos] + [eos] + [pad] * (tok.model_max_length - n_words - 3)
    slots = [n_words, n_words + 1]

    def place(module, inputs, output):
        output = output.clone()
        output[0, slots] = star.tokens[0].vectors
        return output

    hook = plain.text_encoder.get_input_embeddings().register_forward_hook(place)
    try:
        with torch.no_grad():
            by_hand = plain.text_encoder(torch.tensor([ids]))[0]
    finally:
        hook.remove()
    assert torch.allclose(with_embedding, by_hand, atol=1e-6)
    assert not torch.allclose(with_embedding, _encode(plain, "a photo of *"), atol=1e-3)
    assert pipe.tokenizer.tokenize(pipe.maybe_convert_prompt("a photo of *", pipe.tokenizer))[-2:] == ["*", "*_1"]


def test_several_multi_vector_embeddings_and_reloads(tiny_model_dir, tmp_path):
    pipe = load_pipeline(tiny_model_dir, device="cpu")
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    cat, style = _emb("<cat-toy>", 3, seed=2), _emb("<style>", 1, seed=3)
    assert add_embeddings(pipe, [(a, cat), (b, style)]) == ["<cat-toy>", "<style>"]
    weight = pipe.text_encoder.get_input_embeddings().weight
    ids = pipe.textinv.embeddings["<cat-toy>"].token_ids
    assert len(ids) == 3 and torch.equal(weight[ids], cat.tokens[0].vectors)
    expanded = pipe.maybe_convert_prompt("<cat-toy> in <style>", pipe.tokenizer)
    assert pipe.tokenizer.tokenize(expanded) == ["<cat-toy>", "<cat-toy>_1", "<cat-toy>_2", "in</w>", "<style>"]
    size = len(pipe.tokenizer)
    assert add_embeddings(pipe, [(a, cat)]) == []  # the same file again: nothing to do
    assert len(pipe.tokenizer) == size
    with pytest.raises(ModelError, match=r"<cat-toy> is in both a.bin and c.bin; rename one with --token"):
        add_embeddings(pipe, [(tmp_path / "c.bin", _emb("<cat-toy>", 3, seed=9))])


def test_wrong_width_names_both_families(tiny_pipe, tmp_path):
    with pytest.raises(ModelError) as e:
        add_embeddings(tiny_pipe, [(tmp_path / "sd15.pt", _emb("<x>", 1, seed=4, dim=768))])
    assert str(e.value) == (
        "sd15.pt: embedding <x> is SD1.x (768-dim) but the model is 32-dim (no known family); use an embedding "
        "trained for this model, or a model of the embedding's family with --model"
    )
    sdxl = Embedding([Token("<xl>", torch.zeros(1, 768), torch.zeros(1, 1280))])
    with pytest.raises(ModelError, match=r"embedding <xl> is SDXL \(768\+1280-dim\)"):
        add_embeddings(tiny_pipe, [(tmp_path / "xl.safetensors", sdxl)])


def test_prompt_naming_an_unloaded_placeholder_warns(tiny_model_dir, tmp_path):
    (tmp_path / "cat.bin").write_bytes(b"c")
    pipe = load_pipeline(tiny_model_dir, device="cpu")
    add_embeddings(pipe, [(tmp_path / "cat.bin", _emb("<cat>", 1, seed=5))])
    assert check_prompt(pipe, "a <cat> on a mat") == []
    warnings = check_prompt(pipe, "a <dog> and * and <dog>")
    assert warnings == [
        "<dog> is not a loaded placeholder, so it is used as plain text (loaded: <cat>)",
        "* is not a loaded placeholder, so it is used as plain text (loaded: <cat>)",
    ]


def test_embedding_sources_files_folders_and_concept_names(tmp_path, monkeypatch):
    folder = tmp_path / "embs"
    one = save_embedding(_emb("<one>", 1, seed=6), folder / "one.safetensors")
    two = save_embedding(_emb("<two>", 2, seed=7), folder / "two.bin")
    (folder / "readme.txt").write_text("not an embedding")
    assert find_embedding_files(one) == [one]
    assert find_embedding_files(folder) == [one, two]
    monkeypatch.chdir(tmp_path)
    fetched = save_embedding(_emb("<cat-toy>", 1, seed=8), tmp_path / "embeddings" / "cat-toy.safetensors")
    assert [p.resolve() for p in find_embedding_files("cat-toy")] == [fetched.resolve()]
    with pytest.raises(EmbeddingFormatError, match="no concept 'dog-toy' in embeddings/; fetch it with"):
        find_embedding_files("dog-toy")

    loaded = load_embeddings([one, two], tokens=["<a>", "<b>"])
    assert [e.tokens[0].name for _, e in loaded] == ["<a>", "<b>"]
    with pytest.raises(ConfigError, match="--token was given 1 times for 2 embedding files"):
        load_embeddings([folder], tokens=["<a>"])


def test_sdxl_embedding_fills_both_encoders(tmp_path):
    """SDXL: clip_l vectors go to the first text encoder and clip_g vectors to the second, under the same ids."""
    from types import SimpleNamespace

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from textinv.toy.tokenizer import write_clip_tokenizer

    def encoder(cls, dim, tok):
        config = CLIPTextConfig(vocab_size=len(tok), hidden_size=dim, intermediate_size=dim * 2, num_hidden_layers=1,
                                num_attention_heads=2, projection_dim=dim, max_position_embeddings=77,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
        return cls(config)

    words = ["a", "photo", "of"]
    tok, tok_2 = write_clip_tokenizer(words, tmp_path / "t1"), write_clip_tokenizer(words, tmp_path / "t2")
    pipe = SimpleNamespace(
        tokenizer=tok, tokenizer_2=tok_2,
        text_encoder=encoder(CLIPTextModel, 32, tok), text_encoder_2=encoder(CLIPTextModelWithProjection, 48, tok_2),
        textinv=ModelInfo(name="xl", source="xl", kind="folder", family="unknown (dims 32+48)"),
    )  # fmt: skip
    xl = Embedding([Token("<xl>", torch.randn(2, 32), torch.randn(2, 48))])
    (tmp_path / "xl.safetensors").write_bytes(b"stands in for the file; only its hash is read")
    assert add_embeddings(pipe, [(tmp_path / "xl.safetensors", xl)]) == ["<xl>"]
    ids = pipe.textinv.embeddings["<xl>"].token_ids
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], xl.tokens[0].vectors)
    assert torch.equal(pipe.text_encoder_2.get_input_embeddings().weight[ids], xl.tokens[0].vectors_2)
    with pytest.raises(ModelError, match=r"embedding <l> is 32-dim \(no known family\) but the model is 32\+48-dim"):
        add_embeddings(pipe, [(tmp_path / "l.pt", _emb("<l>", 1, seed=1))])


def test_load_pipeline_can_return_the_img2img_pipeline(tiny_model_dir):
    pipe = load_pipeline(tiny_model_dir, device="cpu", img2img=True)
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline" and pipe.textinv.kind == "folder"


# --- structure ------------------------------------------------------------------------------------------------


def test_loading_models_does_not_import_the_toy_package():
    import subprocess
    import sys

    code = "import sys, textinv.models.loading, textinv.models.checkpoints; print('textinv.toy' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


def test_the_library_leaves_other_libraries_logging_alone(tiny_model_dir):
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.set_verbosity_warning()
    load_pipeline(tiny_model_dir, device="cpu")
    assert diffusers.utils.logging.get_verbosity() == diffusers.utils.logging.WARNING
    assert transformers.utils.logging.get_verbosity() == transformers.utils.logging.WARNING


def test_hub_settings_are_read_one_way(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from textinv import hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.offline() is True  # unset in the environment: huggingface_hub's own reading
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub.offline() is False
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert hub.cache_dir() == str(tmp_path / "c")
    monkeypatch.delenv("HF_HUB_CACHE")
    assert hub.cache_dir() == str(Path(os.environ["HF_HOME"]) / "hub")
