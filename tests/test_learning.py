"""Proof that training learns: an embedding taught, through `textinv train` and the shipped configs/toy.yaml,
the one (colour, shape) pair the toy model never saw, draws it; its init word does not."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from textinv.cli import app
from textinv.toy import proof

runner = CliRunner()


@pytest.mark.slow
def test_an_embedding_learns_a_pair_the_toy_model_never_saw(tmp_path):
    concept = proof.write_concept(tmp_path / "purple-triangle")
    result = runner.invoke(app, ["--quiet", "train", str(concept), "--init-word", proof.INIT_WORD, "--config", "toy",
                                 "--name", "proof", "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    (embedding,) = (tmp_path / "runs").glob("proof_*/embeddings/proof.pt")

    match = proof.judge_embedding(embedding, samples=16)
    assert match.learned >= 0.75, match
    assert match.init <= 0.30, match
