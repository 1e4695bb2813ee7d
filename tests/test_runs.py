"""`Run`, the run folder's one reader and writer: create/open, the config, the CSVs, checkpoints and states, image
log names and eval.json. No model: the folder is filled through `Run` itself (or by hand where a test damages it)."""

from __future__ import annotations

import json
import os
import pickle
import re

import pytest
import torch

from textinv import config as cfgmod
from textinv.errors import ConfigError
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import load_embedding
from textinv.runs import Run, resume_config, run_name
from textinv.runs import folder as folder_mod


@pytest.fixture
def pictures(tmp_path):
    path = tmp_path / "my cat"
    path.mkdir()
    return path


@pytest.fixture
def cfg(tmp_path, pictures):
    return cfgmod.build_config(None, ["train.max_steps=6"], **{"data.paths": [str(pictures)],
                                                               "log.output_dir": str(tmp_path / "logs")})


@pytest.fixture
def run(cfg, monkeypatch):
    monkeypatch.setattr(folder_mod.time, "strftime", lambda fmt: "2026-01-01T00-00-00")
    return Run.create(cfg, comment="effective batch 1")


def _state(step: int) -> dict:
    return {"step": step, "learned": torch.full((1, 8), float(step)), "optimizer": {}, "scheduler": {},
            "rng": [torch.zeros(4, dtype=torch.uint8)], "sampler": [{"order": [0], "pos": 0}]}


def _embedding(step: int) -> Embedding:
    return Embedding([Token("*", torch.full((1, 8), float(step)))], name="my_cat", step=step, init_words={"*": "cat"})


# --- create, open, name, config ---------------------------------------------------------------------------------


def test_create_makes_the_layout_and_saves_the_config(run, cfg, tmp_path, monkeypatch):
    assert run.path == tmp_path / "logs" / "my_cat_2026-01-01T00-00-00"
    assert sorted(p.name for p in run.path.iterdir()) == ["config.yaml", "embeddings", "images", "state"]
    assert (run.path / "config.yaml").read_text().splitlines()[0] == "# effective batch 1"
    assert run.name == "my_cat" == run_name(cfg)  # the folder's name, made a word
    assert cfgmod.to_dict(Run.open(run.path).config()) == cfgmod.to_dict(cfg)
    assert Run.open(run.path).name == "my_cat"  # read back from the saved config
    again = Run.create(cfg)  # the same second: a suffix
    assert again.path.name == "my_cat_2026-01-01T00-00-00-1"
    assert not (again.path / "config.yaml").read_text().startswith("#")


def test_open_refuses_a_folder_that_is_not_a_run_in_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        Run.open(tmp_path)
    assert str(e.value) == f"{tmp_path} is not a textinv run folder (no config.yaml); pass logs/<name>_<timestamp>"
    assert not Run.is_run(tmp_path) and not Run.is_run(tmp_path / "missing")


def test_the_config_for_a_resume(run, pictures):
    run.save_checkpoint(2, _embedding(2), _state(2))  # issue 25: resume_config checks the state before any load
    assert resume_config(run.path).train.max_steps == 6
    assert resume_config(run.path, max_steps=9, others={"--name": None, "--gradient-checkpointing": False}) \
        .train.max_steps == 9
    with pytest.raises(ConfigError, match=r"saved config; drop DIR, --set \(only --max-steps may change\)"):
        resume_config(run.path, others={"DIR": [pictures], "--model": None, "--set": ["a=1"]})
    pictures.rmdir()
    with pytest.raises(ConfigError, match=r"my cat does not exist; was it moved\? Put it back, or edit data.paths in "
                                          r".*config.yaml"):
        resume_config(run.path)
    with pytest.raises(ConfigError, match="is not a textinv run folder"):
        resume_config(run.path / "images")


# --- loss.csv and validation.csv ----------------------------------------------------------------------------------


def test_the_csvs_round_trip_and_a_resume_drops_the_later_rows(run):
    for step in range(1, 7):
        run.log_loss(step, 1 / step, 0.005)
    run.log_validation(2, 0.5)
    run.log_validation(4, 0.25)
    run.log_validation(6, 0.125)
    run.close()
    assert (run.path / "loss.csv").read_text().splitlines()[:2] == ["step,loss,lr", "1,1,0.005"]
    assert run.losses()[2] == (3, pytest.approx(1 / 3, rel=1e-5), 0.005)
    assert [s for s, _, _ in run.losses()] == [1, 2, 3, 4, 5, 6]
    assert run.validation_losses() == [(2, 0.5), (4, 0.25), (6, 0.125)]

    with open(run.path / "loss.csv", "a") as f:  # a row cut short by a kill, and an edit
        f.write("7,0.1\ngarbage,1,2\n")
    run.truncate_logs(4)
    assert [s for s, _, _ in run.losses()] == [1, 2, 3, 4]
    assert (run.path / "validation.csv").read_text() == "step,val_loss\n2,0.5\n4,0.25\n"
    run.log_loss(5, 0.5, 0.005)  # the resumed run appends after the kept rows
    run.close()
    assert [s for s, _, _ in run.losses()] == [1, 2, 3, 4, 5]


def test_only_the_main_process_writes(tmp_path):
    run = Run(tmp_path, name="cat", main=False)
    run.log_loss(1, 0.5, 0.1)
    run.log_validation(1, 0.5)
    run.save_checkpoint(1, _embedding(1), _state(1))
    run.write_eval({"rows": []})
    assert run.write_finals(_embedding(1), ["pt"]) == []
    run.plot_losses()
    assert list(tmp_path.iterdir()) == []


# --- checkpoints and states ---------------------------------------------------------------------------------------


def test_checkpoints_are_named_listed_and_the_old_states_dropped(run):
    for step in (2, 4, 6):
        run.save_checkpoint(step, _embedding(step), _state(step))
    assert run.checkpoint_path(4) == run.path / "embeddings" / "my_cat-4.pt"
    assert torch.equal(load_embedding(run.checkpoint_path(4)).tokens[0].vectors, torch.full((1, 8), 4.0))
    assert [p.name for p in run.state_files()] == ["state-000004.pt", "state-000006.pt"]  # the last two
    assert json.loads((run.path / "state.json").read_text()) == {"step": 6, "state": "state/state-000006.pt"}
    assert run.latest_state(print)["step"] == 6

    finals = run.write_finals(_embedding(6), ["pt", "safetensors", "pt"])
    assert [p.name for p in finals] == ["my_cat.pt", "my_cat.safetensors"]
    assert list(run.final_paths(_embedding(6), ["pt", "safetensors"])) == finals
    assert [(s, p.name) for s, p in run.embedding_files()] == [(2, "my_cat-2.pt"), (4, "my_cat-4.pt"),
                                                               (6, "my_cat-6.pt"), (None, "my_cat.pt")]


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing entries", "pointer"])
def test_the_latest_state_falls_back_past_a_damaged_one(run, damage):
    for step in (2, 4):
        run.save_checkpoint(step, _embedding(step), _state(step))
    latest = run.path / "state" / "state-000004.pt"
    if damage == "truncated":
        latest.write_bytes(latest.read_bytes()[:300])
    elif damage == "empty":
        latest.write_bytes(b"")
    elif damage == "missing entries":
        torch.save({"step": 4, "learned": torch.zeros(1)}, latest)
    else:
        latest.write_bytes(latest.read_bytes()[:300])
        (run.path / "state.json").write_text('{"step": 4, "sta')
    said: list[str] = []
    state = run.latest_state(said.append)
    assert state["step"] == 2 and torch.equal(state["learned"], torch.full((1, 8), 2.0))
    assert len(said) == 1 and said[0].startswith("warning: state-000004.pt is ")
    assert said[0].endswith("; resuming from state-000002.pt (step 2)")
    assert not re.search(r"(file|empty|entries) damaged", said[0])  # issue 25: `is empty damaged` was the old grammar


def test_no_state_or_a_hostile_one_is_one_clear_error(run, tmp_path):
    with pytest.raises(ConfigError, match="has no checkpoint to resume from"):
        run.latest_state(print)

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(run.path / "state" / "state-000002.pt", "wb") as f:
        pickle.dump({"step": 2, "x": Boom()}, f)
    with pytest.raises(ConfigError, match="holds Python code, not only tensors"):
        run.latest_state(print)
    assert not (tmp_path / "pwned").exists()
    (run.path / "state" / "state-000002.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"no intact state in .*state-000002.pt is empty"):
        run.latest_state(print)


# --- image logs and eval.json -------------------------------------------------------------------------------------


def test_image_log_names_are_written_and_parsed_back(run):
    for step in (3, 12):
        for key in ("samples_scaled", "init_word", "validation"):
            run.image_log(key, step).write_bytes(b"png")
    run.image_log("conditioning", 3, ".txt").write_text("a photo of *\n")
    (run.images / "notes.png").write_bytes(b"png")  # not an image log: left out
    assert run.image_log("samples", 3).name == "samples_gs-000003.png"
    logs = run.image_logs()
    assert sorted(logs) == [3, 12]
    assert sorted(logs[12]) == ["init_word", "samples_scaled", "validation"]
    assert logs[3]["validation"] == run.images / "validation_gs-000003.png"


def test_eval_json_round_trips_and_a_damaged_one_is_one_clear_error(run):
    assert run.read_eval() is None
    results = {"rows": [{"label": "step 3", "identity": 0.5}], "best": {"label": "step 3", "step": 3, "file": None}}
    run.write_eval(results)
    assert run.read_eval() == results
    (run.path / "eval.json").write_text('{"rows": [')
    with pytest.raises(ConfigError, match=r"eval.json is damaged; run `textinv eval .*` again"):
        run.read_eval()
