"""The training config: defaults, packaged YAML, overrides, and errors that name the fix."""

from __future__ import annotations

import pytest
import yaml

from textinv import config as c
from textinv.errors import ConfigError


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
    resumed = c.config_for_resume(tmp_path, max_steps=7)
    assert resumed.train.max_steps == 7 and resumed.data.paths == ["a", "b"]


def test_packaged_config_names_and_missing_files():
    assert c.resolve_config_path("v2-finetune").name == "v2-finetune.yaml"
    with pytest.raises(ConfigError, match="one of the packaged configs: .*v1-finetune, v2-finetune"):
        c.resolve_config_path("nope")
