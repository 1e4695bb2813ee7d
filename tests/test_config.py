"""The training config: defaults, packaged YAML, overrides, and errors that name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from textinv import config as c
from textinv.errors import ConfigError
from textinv.runs import Run


def test_v1_finetune_is_the_defaults_and_lists_every_key():
    assert c.to_dict(c.load_config("v1-finetune")) == c.to_dict(c.Config())
    text = (c.PACKAGED_CONFIGS / "v1-finetune.yaml").read_text()
    data = yaml.safe_load(text)
    assert sorted(f"{s}.{k}" for s, keys in data.items() for k in keys) == sorted(c.all_keys())
    for key in c.all_keys():  # every knob carries a comment
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(key.split(".")[1] + ":"))
        assert "#" in line or key.startswith("optim.adam_"), line


def test_v2_finetune_is_sd2_768_v_prediction():
    cfg = c.load_config("v2-finetune.yaml")
    assert cfg.data.resolution == 768 and cfg.model.prediction_type == "v_prediction"
    assert c.validate(cfg) is cfg


def test_overrides_set_then_named_flags():
    cfg = c.load_config()
    c.apply_overrides(cfg, ["optim.learning_rate=1e-3", "data.center_crop=false", "log.formats=[pt, bin]",
                            "train.max_steps=10"], **{"train.max_steps": 20, "log.name": None})
    assert cfg.optim.learning_rate == 0.001 and cfg.data.center_crop is False
    assert cfg.log.formats == ["pt", "bin"] and cfg.train.max_steps == 20 and cfg.log.name is None
    c.set_key(cfg, "personalization.placeholder_strings", "<cat>")  # a scalar becomes a one-item list
    assert cfg.personalization.placeholder_strings == ["<cat>"]
    c.set_key(cfg, "optim.learning_rate", "5e-3")  # YAML 1.1 reads 5e-3 as a string
    assert cfg.optim.learning_rate == 0.005
    c.apply_overrides(cfg, ["train.mixed_precision=no"])  # ... and `no` as false
    assert cfg.train.mixed_precision == "no"


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("optim.learnig_rate", "optim.learning_rate"), ("max_steps", "train.max_steps"),
     ("data.resolutoin", "data.resolution"), ("train.batch_size", "data.batch_size")],
)
def test_unknown_keys_name_the_nearest(key, suggestion):
    with pytest.raises(ConfigError, match=rf"unknown config key `{key}`; did you mean `{suggestion}`\?"):
        c.set_key(c.Config(), key, 1)


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rat: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key `optim.learning_rat`; did you mean"):
        c.load_config(bad)
    bad.write_text("trainer:\n  max_steps: 1\n")
    with pytest.raises(ConfigError, match="unknown config section `trainer`"):
        c.load_config(bad)
    bad.write_text("train: [1, 2]\n")
    with pytest.raises(ConfigError, match="section `train` must be a mapping"):
        c.load_config(bad)
    bad.write_text("train: {max_steps: 1\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        c.load_config(bad)


def test_a_key_given_twice_is_an_error_naming_it_and_the_file(tmp_path):
    bad = tmp_path / "twice.yaml"
    bad.write_text("model:\n  family: SD1.x\n  source: toy\n  family: SDXL\n")  # PyYAML alone keeps SDXL
    assert yaml.safe_load(bad.read_text())["model"]["family"] == "SDXL"
    with pytest.raises(ConfigError) as e:
        c.load_config(bad)
    assert str(e.value) == f"{bad}: `model.family` is given twice (lines 2 and 4); keep one"
    bad.write_text("train:\n  max_steps: 1\ntrain:\n  seed: 2\n")
    with pytest.raises(ConfigError, match=r"`train` is given twice \(lines 1 and 3\)"):
        c.load_config(bad)
    child = tmp_path / "child.yaml"  # a duplicate in a `base:` file names that file
    child.write_text(f"base: {bad.name}\ntrain:\n  seed: 3\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: `train` is given twice"):
        c.load_config(child)


def test_keys_alike_only_as_text_in_different_mappings_or_from_a_merge_are_not_duplicates(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("log:\n  prompts: [{a: 1, b: 2}, {a: 3}]\noptim: {1: x, '1': y}\n"
                  "d: &d {max_steps: 7, seed: 1}\ntrain:\n  <<: *d\n  seed: 5\n")
    assert c._read_yaml(ok, ()) == {
        "log": {"prompts": [{"a": 1, "b": 2}, {"a": 3}]},
        "optim": {1: "x", "1": "y"},  # an int key and a string key
        "d": {"max_steps": 7, "seed": 1},
        "train": {"max_steps": 7, "seed": 5},  # a merge key, then an override of what it brought
    }


@pytest.mark.parametrize("name", sorted(p.stem for p in c.PACKAGED_CONFIGS.glob("*.yaml")))
def test_no_packaged_config_gives_a_key_twice(name):
    assert isinstance(c.load_config(name), c.Config)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.max_steps=ten", "`train.max_steps` must be a whole number, got 'ten'"),
        ("train.max_steps=1.5", "must be a whole number"),
        ("data.center_crop=maybe", "`data.center_crop` must be true or false"),
        ("optim.learning_rate=fast", "`optim.learning_rate` must be a number"),
        ("log.formats={a: 1}", "`log.formats` must be a list"),
        ("optim.learning_rate", "--set expects key=value"),
    ],
)
def test_wrong_types(item, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        c.apply_overrides(c.Config(), [item])


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.max_steps=0", "`train.max_steps` is 0; it must be 1 or more"),
        ("data.resolution=100", "must be a multiple of 8"),
        ("data.flip_p=1.5", "`data.flip_p` is 1.5; a probability must be between 0 and 1"),
        ("optim.learning_rate=-1", "`optim.learning_rate` is -1.0; it must be above 0"),
        ("optim.lr_scheduler=step", "`optim.lr_scheduler` is 'step'; it must be one of constant | linear | cosine"),
        ("personalization.placeholder_strings=[]", "is empty; give at least one placeholder"),
        ("personalization.placeholder_strings=['my cat']", "contains a space"),
        ("personalization.initializer_words=[cat, dog]", "1 placeholder(s) ['*'] but 2 init word(s)"),
        ("personalization.num_vectors_per_token=80", "at most 75 tokens"),
        ("log.formats=[png]", "the training formats are pt, bin, safetensors"),
        ("train.mixed_precision=fp8", "it must be one of auto | no | fp16 | bf16"),
        ("log.report_to=tensorboard", "pip install 'textinv[tensorboard]'"),
    ],
)
def test_impossible_values(item, message):
    if item.startswith("log.report_to") and _has_tb():
        pytest.skip("tensorboard is installed here")
    cfg = c.apply_overrides(c.Config(), [item])
    with pytest.raises(ConfigError) as e:
        c.validate(cfg)
    assert message in str(e.value)


def _has_tb() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def test_pt_is_always_written_and_the_config_round_trips(tmp_path):
    cfg = c.validate(c.apply_overrides(c.Config(), ["log.formats=[safetensors]", "data.paths=[a, b]"]))
    assert cfg.log.formats == ["pt", "safetensors"]
    path = tmp_path / "config.yaml"
    path.write_text(c.dump_config(cfg))
    assert c.to_dict(c.load_config(path)) == c.to_dict(cfg)
    resumed = Run.open(tmp_path).config(max_steps=7)
    assert resumed.train.max_steps == 7 and resumed.data.paths == ["a", "b"]


def test_packaged_config_names_and_missing_files():
    assert c.resolve_config_path("v2-finetune").name == "v2-finetune.yaml"
    with pytest.raises(ConfigError, match="one of the packaged configs: .*v1-finetune, v2-finetune"):
        c.resolve_config_path("nope")


# --- base: and the top-level configs/ ------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def test_v2_is_v1_with_six_keys_changed():
    v1, v2 = c.to_dict(c.load_config("v1-finetune")), c.to_dict(c.load_config("v2-finetune"))
    changed = {f"{s}.{k}" for s in v1 for k in v1[s] if v1[s][k] != v2[s][k]}
    assert changed == {"model.source", "model.prediction_type", "model.family", "data.resolution",
                       "data.batch_size", "optim.gradient_accumulation_steps"}
    assert v2["model"]["prediction_type"] == "v_prediction" and v2["data"]["resolution"] == 768


def test_base_is_found_beside_the_file_then_among_the_packaged_ones(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: v1-finetune\ntrain:\n  max_steps: 10\n")
    (tmp_path / "child.yaml").write_text("base: mine.yaml\noptim:\n  learning_rate: 1.0e-3\n")
    cfg = c.load_config(tmp_path / "child.yaml")
    assert (cfg.train.max_steps, cfg.optim.learning_rate, cfg.data.batch_size) == (10, 1e-3, 2)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="leads back to itself"):
        c.load_config(tmp_path / "loop.yaml")


def test_top_level_configs_folder_is_a_link_git_keeps(monkeypatch):
    import subprocess

    assert (REPO / "configs" / "v1-finetune.yaml").read_text() == (c.PACKAGED_CONFIGS / "v1-finetune.yaml").read_text()
    res = subprocess.run(["git", "-C", str(REPO), "ls-files", "-s", "configs"], capture_output=True, text=True)
    if res.returncode != 0 or not res.stdout:
        pytest.skip("not a git checkout")
    assert res.stdout.startswith("120000 ")  # a symbolic link, with a relative target a fresh clone resolves
    monkeypatch.chdir(REPO)
    assert c.load_config("configs/v1-finetune.yaml").train.max_steps == 5000
    assert c.load_config("configs/v2-finetune.yaml").data.resolution == 768


def test_train_with_configs_v1_finetune_from_the_repo_root(monkeypatch, tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from tests.test_train import make_images
    from textinv.cli import app

    images = make_images(tmp_path / "cat")
    monkeypatch.chdir(REPO)
    res = CliRunner().invoke(app, [
        "train", str(images), "--config", "configs/v1-finetune.yaml", "--model", str(tiny_model_dir),
        "--init-word", "cat", "--max-steps", "1", "--out", str(tmp_path / "logs"),
        "--set", "data.resolution=32", "--set", "log.image_every=0", "--set", "log.save_every=0"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "logs").iterdir())) == 1


# --- bounds checked before anything loads ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "item, message",
    [
        (f"train.seed={2**70}", "at most 4294967295"),
        ("optim.weight_decay=.nan", "`optim.weight_decay` is nan; it must be a finite number"),
        ("optim.adam_epsilon=.inf", "must be a finite number"),
        ("optim.learning_rate=1e38", "at most 1 (the paper uses 5e-3)"),
        ("data.batch_size=10000", "at 512 px at most 64 images fit in one micro-batch"),
        ("data.repeats=1000000000", "`data.repeats` is 1000000000; it must be at most 1000"),
        ("data.resolution=65536", "`data.resolution` is 65536; it must be at most 2048"),
    ],
)
def test_bounds(item, message):
    with pytest.raises(ConfigError) as e:
        c.validate(c.apply_overrides(c.Config(), [item]))
    assert message in str(e.value)


def test_batch_bound_shrinks_with_the_resolution():
    assert [c.max_batch_size(r) for r in (32, 512, 768, 1024)] == [64, 64, 28, 16]


def test_a_binary_or_huge_file_as_config_is_one_line(tmp_path):
    binary = tmp_path / "model.ckpt"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="is not a text file"):
        c.load_config(binary)
    huge = tmp_path / "huge.yaml"
    huge.write_text("# x\n" * (c.MAX_CONFIG_BYTES // 4 + 1))
    with pytest.raises(ConfigError, match="a config is a small YAML text file"):
        c.load_config(huge)


def test_keys_from_other_trainers_get_a_useful_hint():
    with pytest.raises(ConfigError) as e:
        c.apply_overrides(c.Config(), ["optim.optimizer=sgd"])
    assert "AdamW only" in str(e.value) and "scale_lr" not in str(e.value)


def test_build_config_stores_absolute_paths(tmp_path, monkeypatch):
    (tmp_path / "cat").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = c.build_config(None, None, **{"data.paths": ["cat"], "model.config": "cfgdir"})
    assert cfg.data.paths == [str(tmp_path / "cat")] and cfg.model.config == str(tmp_path / "cfgdir")
    assert cfg.model.source == c.ModelConfig().source  # a hub id stays as it is


def test_resume_says_when_the_image_folder_moved(tmp_path):
    cfg = c.build_config(None, None, **{"data.paths": [str(tmp_path / "gone")]})
    with pytest.raises(ConfigError, match=r"gone does not exist; was it moved\? Put it back, or edit data.paths"):
        Run(tmp_path).check_image_folders(cfg)
