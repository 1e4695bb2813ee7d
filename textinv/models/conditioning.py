"""What a model family feeds its denoiser for a prompt: one text encoder's last hidden states (SD1.x, SD2.x), SDXL's
two encoders, SD3's three or Flux.1's two (`t5conditioning.py`).

SDXL (as diffusers' `StableDiffusionXLPipeline.encode_prompt` and every SDXL trainer do): each tokenizer tokenizes
the prompt, the penultimate hidden states of `text_encoder` (768 wide) and `text_encoder_2` (1280) are concatenated
into `encoder_hidden_states`, the second encoder's projected pooled output is `text_embeds`, and the six size/crop
numbers (original height and width, crop top and left, target height and width) are `time_ids`. Training uses
original = target = the training resolution and no crop, which is what the pipeline itself passes when generating.

The learned vectors of a placeholder are one row of width sum(`widths`) over the encoders that learn: each reads
its own columns (`columns`), so the optimizer, the checkpoint and the gradient averaging see a single float32
tensor whatever the family. An encoder that does not learn (SD3's and Flux.1's T5 unless asked) reads fixed rows
(`frozen`), its init word's vectors, as OneTrainer keeps an untrained encoder's part.
"""

from __future__ import annotations

import torch


def kind_of(pipe) -> str:
    """'sd', 'sdxl', 'sd3' or 'flux' (`models.peek.KINDS`): the architecture of a loaded pipeline, any width (so
    the tiny test models too), which picks the conditioning, the denoiser and the objective; the family's name comes
    from the widths (`models.loading.model_family`)."""
    if "text_encoder_3" in getattr(pipe, "components", {}) or hasattr(pipe, "text_encoder_3"):
        return "sd3"
    if getattr(pipe, "transformer", None) is not None:
        return "flux"
    return "sdxl" if is_sdxl(pipe) else "sd"


def is_sdxl(pipe) -> bool:
    """Two text encoders and a UNet conditioned on pooled text and size ids: SDXL's architecture, any width."""
    unet = getattr(pipe, "unet", None)
    return getattr(pipe, "text_encoder_2", None) is not None and unet is not None and (
        getattr(unet.config, "addition_embed_type", None) == "text_time"
    )


class Conditioning:
    """SD1.x / SD2.x: one tokenizer, one text encoder, its last hidden states."""

    keys: tuple[str, ...] = ("clip",)  # each encoder's part key in a file (`formats.embedding.Token.from_parts`)

    def __init__(self, pipe):
        self.encoders = [(pipe.tokenizer, pipe.text_encoder)]
        self.trained = [True]
        self.frozen: dict[int, torch.Tensor] = {}  # encoder -> its fixed rows, for an encoder that does not learn

    @property
    def widths(self) -> list[int]:
        return [te.get_input_embeddings().weight.shape[1] for _, te in self.encoders]

    def columns(self) -> list[slice | None]:
        """Which columns of a learned row each encoder reads (None: an encoder that does not learn)."""
        out, start = [], 0
        for w, trained in zip(self.widths, self.trained, strict=True):
            out.append(slice(start, start + w) if trained else None)
            start += w if trained else 0
        return out

    def split(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Learned rows [n, sum(widths of the encoders that learn)] -> one [n, width] tensor per encoder."""
        return [rows[:, c] if c is not None else self.frozen[k].to(rows.device, rows.dtype)
                for k, c in enumerate(self.columns())]

    def cache(self, ids: torch.Tensor) -> None:
        """Encode once, for every prompt the run draws (`ids`: all of them), what does not learn (no-op here)."""

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids of each prompt, padded to the model's 77: [n, 77] (SDXL: [n, 2, 77], one row per tokenizer)."""
        ids = [
            tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                return_tensors="pt").input_ids
            for tok, _ in self.encoders
        ]
        return ids[0] if len(ids) == 1 else torch.stack(ids, dim=1)

    def __call__(self, ids: torch.Tensor) -> dict:
        """The UNet's conditioning keyword arguments for token ids."""
        hidden, added = self.encode(ids)
        return {"encoder_hidden_states": hidden} | ({"added_cond_kwargs": added} if added is not None else {})

    def encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, dict | None]:
        """(encoder_hidden_states, added_cond_kwargs) for the UNet."""
        return self.encoders[0][1](ids)[0], None


class SDXLConditioning(Conditioning):
    """SDXL: both encoders' penultimate hidden states side by side, the second's pooled output, size/crop ids."""

    keys = ("clip_l", "clip_g")

    def __init__(self, pipe, resolution: int):
        super().__init__(pipe)
        self.encoders = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
        self.trained = [True, True]
        self.time_ids = time_ids(resolution)

    def encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, dict | None]:
        hidden, pooled = [], None
        for k, (_, te) in enumerate(self.encoders):
            out = te(ids[:, k], output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's: text_embeds of CLIPTextModelWithProjection
        states = torch.cat(hidden, dim=-1)
        added = {"text_embeds": pooled, "time_ids": self.time_ids.to(states.device, states.dtype).expand(len(ids), -1)}
        return states, added


def time_ids(resolution: int) -> torch.Tensor:
    """SDXL's micro-conditioning for a square `resolution` picture, uncropped: [1, 6]."""
    return torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32)


def conditioning_for(pipe, resolution: int, *, train_t5: bool = False) -> Conditioning:
    """The conditioning of `pipe`'s architecture; `train_t5`: SD3's and Flux.1's T5 learns too."""
    kind = kind_of(pipe)
    if kind in ("sd3", "flux"):
        from textinv.models.t5conditioning import FluxConditioning, SD3Conditioning

        return (SD3Conditioning if kind == "sd3" else FluxConditioning)(pipe, train_t5=train_t5)
    return SDXLConditioning(pipe, resolution) if kind == "sdxl" else Conditioning(pipe)
