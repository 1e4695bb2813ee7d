"""`textinv inspect FILE --model M`: each vector against the model's vocabulary."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from textinv.cli import app
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import save_embedding
from textinv.models.loading import load_pipeline
from textinv.models.vocabulary import diagnose

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model_dir):
    return load_pipeline(str(tiny_model_dir))


def test_norms_nearest_tokens_and_init_word_cosine_match_a_direct_computation(tiny_pipe):
    table = tiny_pipe.text_encoder.get_input_embeddings().weight.detach().float()
    cat = tiny_pipe.tokenizer("cat", add_special_tokens=False).input_ids[0]
    vectors = torch.stack([table[cat] * 1.01, torch.randn(32, generator=torch.Generator().manual_seed(0)) * 0.001])
    emb = Embedding([Token("<x>", vectors)], init_words={"<x>": "cat"})
    check = diagnose(emb, tiny_pipe)
    (tok,) = check["tokens"]
    norms = table.norm(dim=1)
    assert tok["vocab_median_norm"] == pytest.approx(float(norms.median()), abs=1e-4)
    first, second = tok["vectors"]
    assert first["nearest"][0]["token"] == "cat" and first["nearest"][0]["cosine"] == pytest.approx(1.0, abs=1e-4)
    assert first["init_word_cosine"] == pytest.approx(1.0, abs=1e-4)
    assert first["norm"] == pytest.approx(float(vectors[0].norm()), abs=1e-4)
    assert first["norm_percentile"] == pytest.approx(float((norms < vectors[0].norm()).float().mean()) * 100, abs=0.1)
    assert second["init_word_cosine"] == pytest.approx(float(F.cosine_similarity(vectors[1], table[cat], dim=0)),
                                                       abs=1e-4)
    # the tiny vector is far under the vocabulary's norms: one warning, for it alone
    assert len(check["warnings"]) == 1 and "<x> vector 1" in check["warnings"][0]


def test_cli_inspect_with_model_prints_and_warns_on_an_outlier_norm(tiny_model_dir, tmp_path):
    big = Embedding([Token("<big>", torch.ones(2, 32))], name="big")  # norm 5.7, far above the vocabulary
    path = save_embedding(big, tmp_path / "big.pt")
    res = runner.invoke(app, ["inspect", str(path), "--model", str(tiny_model_dir), "--json"])
    assert res.exit_code == 0, res.output
    desc = json.loads(res.stdout)
    assert [v["index"] for v in desc["model_check"]["tokens"][0]["vectors"]] == [0, 1]
    assert all(v["norm_percentile"] == 100.0 for v in desc["model_check"]["tokens"][0]["vectors"])
    # issue 23: in the user's terms, with the figure and the remedies
    assert "warning:" in res.stderr and "prompts will struggle to change this concept" in res.stderr
    assert "x the vocabulary's median" in res.stderr and "--copy-best" in res.stderr
    res = runner.invoke(app, ["inspect", str(path), "--model", str(tiny_model_dir)])
    assert res.exit_code == 0 and "nearest tokens" in res.stdout


def test_an_embedding_of_another_width_is_one_clear_error(tiny_model_dir, tmp_path):
    path = save_embedding(Embedding([Token("<w>", torch.ones(1, 768))]), tmp_path / "sd15.pt")
    res = runner.invoke(app, ["inspect", str(path), "--model", str(tiny_model_dir)])
    assert res.exit_code == 1 and "768-dim" in res.stderr and "Traceback" not in res.output


# The threshold against the real files in ../shared/fixtures/real-embeddings/. No SD weights are at hand, so the
# SD1.x vocabulary's median norm is taken from the files AUTOMATIC1111's EmbeddingMerge extension wrote: their
# vectors are made of vocabulary rows, and their norms (0.387-0.399) agree with EasyNegative's (0.375-0.394).
SD1_TRAINED = {  # file -> does a 3x threshold call it overpowering?
    "a1111-embeddingmerge_SD1.5-HairDetail.pt": False, "a1111_EasyNegative.safetensors": False,
    "a1111_png_test_embedding.png": True, "diffusers_detail-schemas_learned_embeds.safetensors": True,
    "sd-concepts_birb-style_learned_embeds.bin": True, "sd-concepts-dir_na-tarapisu153": True,
    "a1111_bad-hands-5.pt": True, "a1111_eyeliner2.pt": True, "a1111_bad_prompt_version2.pt": True,
    "paper-code_embeddings_parameterdict.pt": True, "paper-code_hades_parameterdict_keys.pt": True,
    "diffusers_singleinsert_learned_embeds.bin": True,
}


def test_the_threshold_on_the_real_sd1_files(real_embeddings):
    from textinv.formats.files import load_embedding
    from textinv.models.vocabulary import OUTLIER_FACTOR, norm_warning

    merged = load_embedding(real_embeddings / "a1111-embeddingmerge_SD1.5-HairDetail.pt").tokens[0].vectors
    median = float(merged.norm(dim=1).median())
    assert 0.38 < median < 0.40
    fired, ratios = {}, {}
    for name in SD1_TRAINED:
        vectors = load_embedding(real_embeddings / name).tokens[0].vectors
        norm = float(vectors.norm(dim=1).median())
        ratios[name], fired[name] = norm / median, norm_warning("v", norm, median, 100.0) is not None
    assert fired == SD1_TRAINED
    # what that means: every trained SD1.x file but EasyNegative is over the factor; the sd-concepts-library
    # ones (2.7-3.9 norm) at 7-10x, the paper code's own at 18-40x
    assert all(6.5 < ratios[n] < 10.5 for n in ("sd-concepts_birb-style_learned_embeds.bin",
                                              "sd-concepts-dir_na-tarapisu153",
                                              "diffusers_detail-schemas_learned_embeds.safetensors"))
    assert ratios["a1111_png_test_embedding.png"] < 2 * OUTLIER_FACTOR < ratios["a1111_bad-hands-5.pt"]
