"""What a model family feeds its denoiser for a prompt: one text encoder's last hidden states (SD1.x, SD2.x), SDXL's
two encoders, SD3's three or Flux.1's two.

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
import torch.nn.functional as F


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
        return (SD3Conditioning if kind == "sd3" else FluxConditioning)(pipe, train_t5=train_t5)
    return SDXLConditioning(pipe, resolution) if kind == "sdxl" else Conditioning(pipe)


# --- SD3 and Flux.1 -------------------------------------------------------------------------------------------
# SD3's and Flux.1's text conditioning: CLIP encoders beside a T5-XXL one, as diffusers 0.42's pipelines encode a
# prompt (`StableDiffusion3Pipeline.encode_prompt`, `FluxPipeline.encode_prompt`), so that training sees what
# generation will.
#
# SD3: each CLIP tokenizer pads to 77; the penultimate hidden states of CLIP-L (768) and OpenCLIP-bigG (1280) go side
# by side, zero-padded to T5's width (4096), and T5's last hidden states (256 tokens, with its end token) follow them
# in the sequence; the pooled vector is both CLIPs' projected pooled outputs side by side (2048). Without a T5
# encoder (`text_encoder_3=None`) its part is zeros, as the pipeline does.
#
# Flux.1: CLIP-L gives only its pooled output (768, `pooled_projections`); the sequence is T5's (512 tokens): for
# Flux the T5 part carries most of a concept, so training it (`personalization.train_t5`) is what makes a Flux
# embedding strong. The transformer's text position ids are zeros.
#
# T5 tokenises with sentencepiece (no `</w>`): a placeholder's tokens are added to its tokenizer as whole words as
# for CLIP. When T5 does not learn, its outputs for every training prompt are computed once (`cache`) and looked up,
# so the 4.7B-parameter encoder runs once per prompt, not once per step.

CLIP_LENGTH = 77
SD3_T5_LENGTH = 256  # StableDiffusion3Pipeline's max_sequence_length default
FLUX_T5_LENGTH = 512  # FluxPipeline's
CACHE_BATCH = 8


class T5Conditioning(Conditioning):
    """The part SD3 and Flux.1 share: tokenising for every encoder (ids side by side, [n, sum of lengths]) and T5's
    hidden states, cached when T5 does not learn."""

    t5_length: int

    def __init__(self, encoders: list, keys: tuple[str, ...], trained: list[bool]):
        self.encoders, self.keys, self.trained = encoders, keys, trained
        self.frozen: dict[int, torch.Tensor] = {}
        self.lengths = [CLIP_LENGTH] * (len(encoders) - 1) + [self.t5_length]
        self._cached: dict[tuple[int, ...], torch.Tensor] | None = None

    @property
    def t5(self):
        return self.encoders[-1][1]

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        ids = [tok(prompts, padding="max_length", max_length=n, truncation=True, return_tensors="pt").input_ids
               for (tok, _), n in zip(self.encoders, self.lengths, strict=True)]
        return torch.cat(ids, dim=1)

    def pieces(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """Each encoder's token ids out of the side-by-side ids."""
        return list(ids.split(self.lengths, dim=1))

    @torch.no_grad()
    def cache(self, ids: torch.Tensor) -> None:
        if self.trained[-1] or self.t5 is None:
            return
        t5_ids = self.pieces(ids)[-1].unique(dim=0)
        self._cached = {}
        for chunk in t5_ids.split(CACHE_BATCH):  # a few prompts at a time: T5-XXL's activations are large
            self._cached.update({tuple(row.tolist()): state for row, state in zip(chunk, self.t5(chunk)[0], strict=True)})

    def t5_states(self, ids: torch.Tensor) -> torch.Tensor:
        """T5's last hidden states for its token ids [n, length]: from the cache when T5 does not learn."""
        if self._cached is None:
            return self.t5(ids)[0]
        return torch.stack([self._cached[tuple(row.tolist())] for row in ids])


class SD3Conditioning(T5Conditioning):
    """SD3 / SD3.5: CLIP-L, OpenCLIP-bigG and (optionally) T5-XXL."""

    t5_length = SD3_T5_LENGTH

    def __init__(self, pipe, *, train_t5: bool = False):
        encoders = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
        has_t5 = pipe.text_encoder_3 is not None
        if has_t5:
            encoders.append((pipe.tokenizer_3, pipe.text_encoder_3))
        super().__init__(encoders, ("clip_l", "clip_g", "t5")[:len(encoders)], [True, True, train_t5][:len(encoders)])
        self.lengths = [CLIP_LENGTH, CLIP_LENGTH] + ([self.t5_length] if has_t5 else [])
        self.joint_dim = pipe.transformer.config.joint_attention_dim

    @property
    def t5(self):
        return self.encoders[2][1] if len(self.encoders) == 3 else None

    def __call__(self, ids: torch.Tensor) -> dict:
        pieces = self.pieces(ids)
        hidden, pooled = [], []
        for k in (0, 1):
            out = self.encoders[k][1](pieces[k], output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled.append(out[0])  # text_embeds of CLIPTextModelWithProjection
        clip = torch.cat(hidden, dim=-1)
        if self.t5 is not None:
            t5 = self.t5_states(pieces[2])
        else:
            t5 = clip.new_zeros(len(ids), self.t5_length, self.joint_dim)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {"encoder_hidden_states": torch.cat([clip, t5.to(clip.dtype)], dim=-2),
                "pooled_projections": torch.cat(pooled, dim=-1)}


class FluxConditioning(T5Conditioning):
    """Flux.1: CLIP-L's pooled output and T5-XXL's sequence."""

    t5_length = FLUX_T5_LENGTH

    def __init__(self, pipe, *, train_t5: bool = False):
        encoders = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
        super().__init__(encoders, ("clip_l", "t5"), [True, train_t5])

    def __call__(self, ids: torch.Tensor) -> dict:
        clip_ids, t5_ids = self.pieces(ids)
        pooled = self.encoders[0][1](clip_ids, output_hidden_states=False).pooler_output
        t5 = self.t5_states(t5_ids)
        return {"encoder_hidden_states": t5, "pooled_projections": pooled,
                "txt_ids": t5.new_zeros(t5.shape[1], 3)}
