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
    assert "warning:" in res.stderr and "overpower" in res.stderr
    res = runner.invoke(app, ["inspect", str(path), "--model", str(tiny_model_dir)])
    assert res.exit_code == 0 and "nearest tokens" in res.stdout


def test_an_embedding_of_another_width_is_one_clear_error(tiny_model_dir, tmp_path):
    path = save_embedding(Embedding([Token("<w>", torch.ones(1, 768))]), tmp_path / "sd15.pt")
    res = runner.invoke(app, ["inspect", str(path), "--model", str(tiny_model_dir)])
    assert res.exit_code == 1 and "768-dim" in res.stderr and "Traceback" not in res.output
