"""Write a diffusers pipeline as an original-layout (CompVis / LDM) single-file checkpoint, for the tests.

The key names are those of the original `model.ckpt` files (`model.diffusion_model.input_blocks.1.0.in_layers.0`,
`first_stage_model.encoder.down.0.block.0.norm1`, `cond_stage_model.transformer.text_model.*`), so that loading
it exercises diffusers' real single-file conversion. Written for the SD1-shaped test pipelines only (a UNet of
DownBlock2D/CrossAttn blocks, an AutoencoderKL, a CLIP text encoder).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_TOP = {"conv_norm_out": "norm_out"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str) -> str:
    layer, _, param = rest.rpartition(".")
    return f"{_RESNET[layer]}.{param}"


def unet_key(key: str, layers_per_block: int, up_has_attention: dict[int, bool]) -> str:
    """The LDM name of one diffusers UNet2DConditionModel parameter."""
    per = layers_per_block + 1
    for new, old in _UNET_TOP.items():
        if key.startswith(new + "."):
            return old + key[len(new) :]
    if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        b, i, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{1 + b * per + i}.0.{_resnet(rest)}"
    if m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * per + int(m[2])}.1.{m[3]}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * per + layers_per_block}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.match(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"output_blocks.{int(m[1]) * per + int(m[2])}.0.{_resnet(m[3])}"
    if m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"output_blocks.{int(m[1]) * per + int(m[2])}.1.{m[3]}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        b = int(m[1])
        slot = 2 if up_has_attention[b] else 1
        return f"output_blocks.{b * per + layers_per_block}.{slot}.conv.{m[2]}"
    raise KeyError(key)


def vae_key(key: str, n_up: int) -> tuple[str, bool]:
    """The LDM name of one AutoencoderKL parameter, and whether it is an attention weight stored as a 1x1 conv."""
    part, _, rest = key.partition(".")
    if part in ("quant_conv", "post_quant_conv") or rest.startswith(("conv_in.", "conv_out.")):
        return key, False
    for new, old in _VAE_TOP.items():
        if rest.startswith(new + "."):
            return f"{part}.{old}{rest[len(new) :]}", False
    rest = rest.replace("conv_shortcut", "nin_shortcut")
    if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        return f"{part}.down.{m[1]}.block.{m[2]}.{m[3]}", False
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", rest):
        return f"{part}.down.{m[1]}.downsample.conv.{m[2]}", False
    if m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        return f"{part}.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{m[3]}", False
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", rest):
        return f"{part}.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}", False
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
        return f"{part}.mid.block_{int(m[1]) + 1}.{m[2]}", False
    if m := re.match(r"mid_block\.attentions\.0\.(.+)\.(weight|bias)", rest):
        return f"{part}.mid.attn_1.{_VAE_ATTN[m[1]]}.{m[2]}", m[1] != "group_norm" and m[2] == "weight"
    raise KeyError(key)


def ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """The whole pipeline's weights under LDM names."""
    unet = pipe.unet
    up_attn = {i: hasattr(b, "attentions") for i, b in enumerate(unet.up_blocks)}
    sd: dict[str, torch.Tensor] = {}
    for k, v in unet.state_dict().items():
        sd["model.diffusion_model." + unet_key(k, unet.config.layers_per_block, up_attn)] = v.clone()
    n_up = len(pipe.vae.config.up_block_types)
    for k, v in pipe.vae.state_dict().items():
        name, conv = vae_key(k, n_up)
        sd["first_stage_model." + name] = (v[:, :, None, None] if conv else v).clone()
    for k, v in pipe.text_encoder.state_dict().items():
        k = k if k.startswith("text_model.") else "text_model." + k
        sd["cond_stage_model.transformer." + k] = v.clone()
    return sd


def config_only_copy(model_dir: Path, dest: Path) -> Path:
    """A copy of a diffusers folder without its weights: what `--model-config` needs (configs and tokenizer)."""
    shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return dest
