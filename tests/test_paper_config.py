"""The paper code's own `v1-finetune.yaml` (its OmegaConf layout) is read: keys with a meaning here are used,
the rest are listed in one notice."""

from __future__ import annotations

import textwrap

import yaml
from typer.testing import CliRunner

from tests.test_train import make_images
from textinv import config as c
from textinv.cli import app
from textinv.formats.files import load_embedding

# configs/stable-diffusion/v1-finetune.yaml of rinongal/textual_inversion, with the values a user edits for a
# small run (max_steps, the placeholder, its init word, the image size) and the tiny test model's context width.
PAPER_YAML = textwrap.dedent("""\
    model:
      base_learning_rate: 5.0e-03
      target: ldm.models.diffusion.ddpm.LatentDiffusion
      params:
        linear_start: 0.00085
        linear_end: 0.0120
        num_timesteps_cond: 1
        log_every_t: 200
        timesteps: 1000
        first_stage_key: image
        cond_stage_key: caption
        image_size: 64
        channels: 4
        cond_stage_trainable: true
        conditioning_key: crossattn
        monitor: val/loss_simple_ema
        scale_factor: 0.18215
        use_ema: False
        embedding_reg_weight: 0.0

        personalization_config:
          target: ldm.modules.embedding_manager.EmbeddingManager
          params:
            placeholder_strings: ["<cat>"]
            initializer_words: ["cat"]
            per_image_tokens: false
            num_vectors_per_token: 2
            progressive_words: False

        unet_config:
          target: ldm.modules.diffusionmodules.openaimodel.UNetModel
          params:
            image_size: 32
            in_channels: 4
            model_channels: 320
            attention_resolutions: [ 4, 2, 1 ]
            context_dim: 32
            use_checkpoint: True

        first_stage_config:
          target: ldm.models.autoencoder.AutoencoderKL
          params:
            embed_dim: 4
            ddconfig:
              double_z: true
              ch_mult: [1, 2, 4, 4]
            lossconfig:
              target: torch.nn.Identity

        cond_stage_config:
          target: ldm.modules.encoders.modules.FrozenCLIPEmbedder

    data:
      target: main.DataModuleFromConfig
      params:
        batch_size: 2
        num_workers: 2
        wrap: false
        train:
          target: ldm.data.personalized.PersonalizedBase
          params:
            size: 32
            set: train
            per_image_tokens: false
            repeats: 100
        validation:
          target: ldm.data.personalized.PersonalizedBase
          params:
            size: 32
            set: val
            per_image_tokens: false
            repeats: 10

    lightning:
      callbacks:
        image_logger:
          target: main.ImageLogger
          params:
            batch_frequency: 500
            max_images: 1
            increase_log_steps: False

      trainer:
        benchmark: True
        max_steps: 3
    """)


def test_paper_keys_are_mapped_and_the_rest_listed(tmp_path):
    path = tmp_path / "v1-finetune.yaml"
    path.write_text(PAPER_YAML)
    notes: list[str] = []
    cfg = c.load_config(path, notes=notes)
    assert cfg.optim.learning_rate == 5e-3
    assert cfg.personalization.placeholder_strings == ["<cat>"]
    assert cfg.personalization.initializer_words == ["cat"]
    assert cfg.personalization.num_vectors_per_token == 2
    assert (cfg.data.batch_size, cfg.data.resolution, cfg.data.repeats) == (2, 32, 100)
    assert (cfg.train.max_steps, cfg.log.image_every, cfg.log.num_images) == (3, 500, 1)
    (note,) = notes
    ignored = note.split("were ignored: ")[1].split(", ")
    for key in ("model.target", "model.params.linear_start", "model.params.unet_config.*",
                "model.params.first_stage_config.*", "data.params.validation.*", "lightning.trainer.benchmark",
                "model.params.personalization_config.params.progressive_words"):
        assert key in ignored, key
    assert not any(k.startswith(("lightning.trainer.max_steps", "data.params.batch_size")) for k in ignored)


def test_a_style_data_target_trains_the_style_templates(tmp_path):
    path = tmp_path / "v1-finetune_style.yaml"
    path.write_text(PAPER_YAML.replace("ldm.data.personalized.PersonalizedBase",
                                       "ldm.data.personalized_style.PersonalizedBase"))
    assert c.load_config(path).personalization.learnable_property == "style"


def test_the_paper_yaml_trains_with_its_steps_placeholder_and_init_word(tmp_path, tiny_model_dir):
    path = tmp_path / "v1-finetune.yaml"
    images = make_images(tmp_path / "cat")
    # the folder as the paper's --data_root gives it, so no DIR on the command line
    path.write_text(PAPER_YAML.replace("set: train\n", f"set: train\n        data_root: {images}\n", 1))
    res = CliRunner().invoke(app, ["train", "--config", str(path), "--model", str(tiny_model_dir),
                                   "--out", str(tmp_path / "logs"), "--set", "log.sample_steps=2"])
    assert res.exit_code == 0, res.output
    assert res.output.count("were ignored") == 1 and "lightning.trainer.benchmark" in res.output
    (run_dir,) = (tmp_path / "logs").iterdir()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())  # the resolved config, in textinv's layout
    assert saved["train"]["max_steps"] == 3
    assert saved["personalization"]["placeholder_strings"] == ["<cat>"]
    emb = load_embedding(run_dir / "embeddings" / "cat.pt")
    assert emb.step == 3 and [t.name for t in emb.tokens] == ["<cat>"] and emb.tokens[0].num_vectors == 2
