"""Image and text similarity for judging an embedding: CLIP (image-image, text-image) and DINO (image-image).

The scores are the ones the textual-inversion paper and the CustomConcept101 benchmark use:

- identity (CLIP): the mean cosine similarity, over every (sample, training picture) pair, of CLIP's projected
  image features;
- identity (DINO): the same with the CLS token of the last layer of a self-supervised ViT (DINO / DINOv2);
- editability (CLIP): the mean cosine similarity, over the samples of one prompt, of CLIP's projected image
  features and the projected text features of that prompt (with the placeholder replaced by its init word).

Models load through transformers from a local folder or a hub id; a hub id is read from the cache when
HF_HUB_OFFLINE is set, as `--model` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from textinv.errors import ModelError, first_line

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_DINO = "facebook/dino-vits16"


@dataclass
class Scorer:
    """A loaded scoring model and its image (and, for CLIP, text) preprocessor."""

    name: str
    model: object
    processor: object

    @torch.no_grad()
    def image_features(self, images: list) -> torch.Tensor:
        """[n, d] unit vectors, one per PIL image."""
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.model.device, self.model.dtype)
        if hasattr(self.model, "get_image_features"):  # CLIP: the projected image embedding
            feats = _tensor(self.model.get_image_features(pixel_values=pixels))
        else:  # DINO / DINOv2: the CLS token of the last layer
            feats = self.model(pixel_values=pixels).last_hidden_state[:, 0]
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """[n, d] unit vectors, one per text (CLIP only)."""
        tok = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        feats = _tensor(self.model.get_text_features(input_ids=tok["input_ids"].to(self.model.device),
                                                     attention_mask=tok["attention_mask"].to(self.model.device)))
        return F.normalize(feats.float(), dim=-1)


def _tensor(out) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output is the projection; 4.x returns the tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def image_similarity(samples: torch.Tensor, references: torch.Tensor) -> float:
    """Mean cosine over every (sample, reference) pair of unit feature vectors."""
    return float((samples @ references.T).mean())


def text_similarity(samples: torch.Tensor, text: torch.Tensor) -> float:
    """Mean cosine of unit image features [n, d] to one unit text feature [d] (or [1, d])."""
    return float((samples @ text.reshape(-1)).mean())


def load_clip(source: str, *, device: str | torch.device = "cpu") -> Scorer:
    from transformers import CLIPModel, CLIPProcessor

    where = _location(source, "CLIP")
    try:
        model = CLIPModel.from_pretrained(where, local_files_only=_local_only(where))
        processor = CLIPProcessor.from_pretrained(where, local_files_only=_local_only(where))
    except (OSError, ValueError) as e:
        raise ModelError(_cannot_load("CLIP", source, e, "--clip")) from None
    return Scorer(source, model.to(device).eval(), processor)


def load_dino(source: str, *, device: str | torch.device = "cpu") -> Scorer:
    from transformers import AutoImageProcessor, AutoModel

    where = _location(source, "DINO")
    try:
        model = AutoModel.from_pretrained(where, local_files_only=_local_only(where))
        processor = AutoImageProcessor.from_pretrained(where, local_files_only=_local_only(where))
    except (OSError, ValueError, TypeError) as e:
        raise ModelError(_cannot_load("DINO", source, e, "--dino")) from None
    return Scorer(source, model.to(device).eval(), processor)


def _location(source: str, what: str) -> str:
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path)
    if source.startswith((".", "/", "~")):
        raise ModelError(f"{what} model {source}: no such folder; pass a hub id or a folder saved by transformers")
    return source


def _local_only(where: str) -> bool:
    return Path(where).is_dir() or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def _cannot_load(what: str, source: str, e: Exception, flag: str) -> str:
    offline = " (HF_HUB_OFFLINE is set and it is not in the cache)" if not Path(source).is_dir() and \
        _local_only(source) else ""
    return (f"cannot load the {what} model {source}{offline}: {first_line(e)}; pass {flag} with a local folder "
            f"or a cached hub id, or {flag} none to skip it")
