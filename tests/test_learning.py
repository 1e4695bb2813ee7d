"""Proof that training learns: an embedding taught, through `textinv train` and the shipped configs/toy.yaml, a
(colour, shape) pair the toy model never saw, draws it; its init word does not; and (issue 21) it stays editable:
asked for the concept in another colour, the model draws its shape in that colour."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from textinv.cli import app
from textinv.toy import proof, world

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


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="not reached yet (issue 21): on 2026-12-07, on the rebuilt model, these "
                   "pictures (the yellow square, seed 5) gave identity 62% / editability 82% with configs/toy.yaml "
                   "(one vector, edit anchor 1); the bench's check runs gave 34% / 72% on average (README, Identity "
                   "and editability)")
def test_default_toy_training_reaches_the_identity_and_editability_targets_on_an_unseen_concept(tmp_path):
    """Issue 21's target for the packaged toy config: identity >= 90% and editability >= 60%, on the last held-out
    concept (the yellow square: the defaults were chosen on the purple triangle and the green circle), from pictures
    of a seed neither the other tests nor bench/levers.py used, judged with edit templates other than the eval's
    and the bench's."""
    concept = world.HELD_OUT[-1]
    folder = proof.write_concept(tmp_path / "concept", concept=concept, seed=5)
    result = runner.invoke(app, ["--quiet", "train", str(folder), "--init-word", concept[1], "--config", "toy",
                                 "--name", "target", "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    (embedding,) = (tmp_path / "runs").glob("target_*/embeddings/target.pt")
    match = proof.judge_embedding(embedding, init_word=concept[1], concept=concept, samples=16, edits=True,
                                  templates=("a good photo of a {colour} {}", "the photo of the {colour} {}"))
    assert match.learned >= 0.9, match
    assert match.edits >= 0.6, match
