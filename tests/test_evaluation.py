"""`textinv eval`: the grid, the scores per checkpoint, the best-step rule, --json and --copy-best."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from textinv import config as cfgmod
from textinv.cli import app
from textinv.evaluation.evaluate import TOY_EDIT_PROMPTS, Row, best_row
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import load_embedding, save_embedding

runner = CliRunner()


def _row(step, identity, editability, baseline=False):
    return Row(label=f"step {step}", step=step, file=None, baseline=baseline, identity=identity,
               editability=editability)


def test_best_step_is_the_highest_identity_among_the_balanced_checkpoints():
    """Issue 21 changed the rule: it weighs identity and editability alike (each as a fraction of the best
    checkpoint's), so a checkpoint that gave up either one loses; the old rule (editability within 10% of the
    best) picked step 100 here and step 0 in the toy case below."""
    rows = [
        _row(None, 0.50, 0.40, baseline=True),  # the init word: never picked
        _row(0, 0.60, 0.30),  # balance min(0.75, 1) = 0.75
        _row(100, 0.70, 0.29),  # min(0.875, 0.967) = 0.875
        _row(200, 0.80, 0.26),  # min(1, 0.867) = 0.867: within 10% of the best balance, and the best identity
        _row(300, 0.70, 0.28),  # 0.875, ties with step 100: the earlier step wins
    ]
    assert best_row(rows, margin=0.1).step == 200
    assert best_row(rows, margin=0.0).step == 100  # only the best balance: 100 and 300, the earlier wins


def test_on_toy_like_scores_the_best_step_keeps_both():
    """Shares as the toy judge gives them: step 0 is the init word (editable, not the concept), the last step the
    concept that ignores the colour asked for."""
    rows = [_row(None, 0.0, 1.0, baseline=True), _row(0, 0.0, 0.95), _row(50, 0.5, 0.8), _row(100, 0.9, 0.65),
            _row(150, 1.0, 0.3)]
    assert best_row(rows).step == 100


def test_without_editability_the_best_is_the_highest_identity():
    rows = [_row(0, 0.1, None), _row(50, 0.6, None), _row(100, 0.4, None)]
    assert best_row(rows).step == 50
    assert best_row([_row(0, None, None)]) is None


@pytest.fixture
def fake_run(tiny_model_dir, tmp_path):
    """A run folder as `textinv train` leaves it: config.yaml, the pictures and two checkpoints."""
    from PIL import Image

    data = tmp_path / "pics"
    data.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        arr = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(data / f"{i}.png")
    run = tmp_path / "run"
    (run / "embeddings").mkdir(parents=True)
    cfg = cfgmod.build_config(None, None, **{"data.paths": [str(data)], "model.source": str(tiny_model_dir),
                                             "personalization.initializer_words": ["cat"], "log.name": "c"})
    (run / "config.yaml").write_text(cfgmod.dump_config(cfg))
    for step in (10, 20):
        emb = Embedding([Token("*", torch.randn(1, 32, generator=g) * 0.3)], name="c", step=step,
                        init_words={"*": "cat"})
        save_embedding(emb, run / "embeddings" / f"c-{step}.pt")
    save_embedding(emb, run / "embeddings" / "c.pt")  # the final file repeats the last checkpoint
    return run


def _eval(args):
    result = runner.invoke(app, ["--quiet", "eval", *args])
    assert result.exit_code == 0, result.output
    return result


def test_eval_of_a_run_scores_step_0_every_checkpoint_and_the_init_word(fake_run, tiny_clip_dir, tiny_dino_dir,
                                                                         tmp_path):
    args = [str(fake_run), "--clip", str(tiny_clip_dir), "--dino", str(tiny_dino_dir), "--seeds", "2",
            "--steps", "2", "--json"]
    first = json.loads(_eval(args).stdout)
    again = json.loads(_eval(args).stdout)
    assert first == again  # fixed seeds: the same numbers every time

    assert [r["label"] for r in first["rows"]] == ["init word (cat)", "step 0", "step 10", "step 20"]
    assert [r["baseline"] for r in first["rows"]] == [True, False, False, False]
    for r in first["rows"]:
        assert -1 <= r["identity_clip"] <= 1 and -1 <= r["identity_dino"] <= 1
        assert r["identity"] == r["identity_clip"]
        assert set(r["per_prompt"]) == set(first["settings"]["edit_prompts"])
        assert r["editability"] == pytest.approx(sum(r["per_prompt"].values()) / len(r["per_prompt"]))
        assert (fake_run / r["grid"]).is_file()
    expected = best_row([Row(**r) for r in first["rows"]], first["settings"]["margin"])
    assert first["best"]["step"] == expected.step
    assert "balance" in first["rule"] and "at least 90% of the best balance" in first["rule"]
    assert json.loads((fake_run / "eval.json").read_text()) == first

    # step 0 is the init word's vectors: with one vector, the same images as the init word's baseline
    init, step0 = first["rows"][0], first["rows"][1]
    assert step0["identity_clip"] == pytest.approx(init["identity_clip"], abs=1e-5)


def test_copy_best_writes_the_chosen_embedding(fake_run, tiny_clip_dir, tmp_path):
    out = tmp_path / "best.safetensors"
    res = _eval([str(fake_run), "--clip", str(tiny_clip_dir), "--seeds", "1", "--steps", "2", "--json",
                 "--copy-best", str(out)])
    best = json.loads(res.stdout)["best"]
    written = load_embedding(out)
    if best["file"]:
        source = load_embedding(best["file"])
        assert torch.equal(written.tokens[0].vectors, source.tokens[0].vectors)
    assert written.tokens[0].name == "*"


def test_an_embedding_file_with_data_and_no_clip_has_no_scores_and_says_so(fake_run, tiny_model_dir):
    res = runner.invoke(app, ["eval", str(fake_run / "embeddings" / "c-10.pt"), "--data", str(fake_run.parent / "pics"),
                              "--model", str(tiny_model_dir), "--init-word", "cat", "--clip", "none", "--seeds", "1", "--steps", "1",
                              "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [r["label"] for r in out["rows"]] == ["init word (cat)", "c-10.pt"]
    assert out["best"] is None
    assert "no CLIP model" in res.stderr


def test_eval_without_data_is_one_clear_error(fake_run, tiny_model_dir):
    res = runner.invoke(app, ["eval", str(fake_run / "embeddings" / "c-10.pt"), "--model", str(tiny_model_dir)])
    assert res.exit_code == 1
    assert "pass --data DIR" in res.stderr and "Traceback" not in res.output


@pytest.mark.slow
def test_on_the_toy_model_identity_rises_with_training_and_the_best_step_is_not_step_0(tmp_path):
    from textinv.toy import proof

    concept = proof.write_concept(tmp_path / "purple-triangle")
    res = runner.invoke(app, ["--quiet", "train", str(concept), "--init-word", proof.INIT_WORD, "--config", "toy",
                              "--name", "p", "--output-dir", str(tmp_path / "runs"), "--set", "log.save_every=150"])
    assert res.exit_code == 0, res.output
    (run,) = (tmp_path / "runs").glob("p_*")
    out = json.loads(_eval([str(run), "--seeds", "8", "--steps", "25", "--cfg", "5", "--json"]).stdout)
    by_label = {r["label"]: r for r in out["rows"]}
    assert list(by_label) == ["init word (triangle)", "step 0", "step 150", "step 300"]
    ident = [by_label[k]["identity"] for k in ("step 0", "step 150", "step 300")]
    assert ident[0] <= 0.25 and ident[2] >= 0.75 and ident[2] > ident[0], ident
    assert out["best"]["step"] in (150, 300)
    # issue 21: the toy judge measures editability too (the concept's shape in the colour asked for)
    assert all(r["identity_clip"] is None and 0 <= r["editability"] <= 1 for r in out["rows"])
    assert by_label["init word (triangle)"]["editability"] >= 0.8  # the init word obeys the colour
    assert out["settings"]["edit_prompts"] == list(TOY_EDIT_PROMPTS)
    assert any("toy" in n and "CLIP" in n for n in out["notes"])
    assert "balance" in out["rule"]


def test_on_the_toy_model_eval_measures_editability_with_colour_edits(tmp_path):
    from textinv.toy import proof, world

    concept = proof.write_concept(tmp_path / "pics")
    emb = Embedding([Token("*", torch.zeros(1, 64))], init_words={"*": "triangle"})
    path = save_embedding(emb, tmp_path / "e.safetensors")
    out = json.loads(_eval([str(path), "--model", "toy", "--data", str(concept), "--seeds", "1", "--steps", "2",
                            "--json"]).stdout)
    assert out["settings"]["edit_prompts"] == list(TOY_EDIT_PROMPTS)
    for row in out["rows"]:
        assert set(row["per_prompt"]) == set(TOY_EDIT_PROMPTS)
        assert row["editability"] == pytest.approx(sum(row["per_prompt"].values()) / len(TOY_EDIT_PROMPTS))
        assert all(v * (len(world.COLOURS) - 1) == int(v * (len(world.COLOURS) - 1)) for v in row["per_prompt"].values())
    assert any("editability the share" in n for n in out["notes"])


def test_on_the_toy_model_eval_progress_counts_every_colour_edit(tmp_path):
    """The progress's total is the images eval makes: the colour edits are one prompt per other colour."""
    from textinv.evaluation.evaluate import EvalSettings, evaluate
    from textinv.reporting import Reporter
    from textinv.toy import proof

    class Counting(Reporter):
        def start(self, task, total, *, done=0, note=""):
            self.total = total

        def advance(self, task, done, **values):
            self.done = done

    concept = proof.write_concept(tmp_path / "pics")
    emb = Embedding([Token("*", torch.zeros(1, 64))], init_words={"*": "triangle"})
    path = save_embedding(emb, tmp_path / "e.safetensors")
    seen = Counting()
    evaluate([path], data=concept, model="toy", settings=EvalSettings(seeds=1, steps=2), reporter=seen)
    assert seen.done == seen.total == 2 * (1 + len(TOY_EDIT_PROMPTS) * 5)  # init word + the file; 5 other colours
