"""CLIP and DINO scores, computed the documented way, against a direct computation with the models' own parts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from textinv.errors import ModelError
from textinv.evaluation.scoring import image_similarity, load_clip, load_dino, text_similarity


def _pictures(seed: int, n: int) -> list[Image.Image]:
    g = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()) for _ in range(n)]


def _pixels(processor, images):
    return processor(images=images, return_tensors="pt")["pixel_values"]


def test_clip_identity_is_the_mean_pairwise_cosine_of_projected_image_features(tiny_clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    samples, refs = _pictures(0, 3), _pictures(1, 2)
    scorer = load_clip(str(tiny_clip_dir))
    got = image_similarity(scorer.image_features(samples), scorer.image_features(refs))

    model, processor = CLIPModel.from_pretrained(tiny_clip_dir), CLIPProcessor.from_pretrained(tiny_clip_dir)
    with torch.no_grad():
        def feats(images):
            pooled = model.vision_model(pixel_values=_pixels(processor, images)).pooler_output
            return model.visual_projection(pooled)
        a, b = feats(samples), feats(refs)
    expected = sum(F.cosine_similarity(x, y, dim=0) for x in a for y in b) / (len(a) * len(b))
    assert got == pytest.approx(float(expected), abs=1e-5)
    assert -1.0 <= got <= 1.0


def test_clip_editability_is_the_mean_cosine_of_images_to_the_prompt(tiny_clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    images = _pictures(2, 3)
    scorer = load_clip(str(tiny_clip_dir))
    got = text_similarity(scorer.image_features(images), scorer.text_features(["a photo of the cat"]))

    model, processor = CLIPModel.from_pretrained(tiny_clip_dir), CLIPProcessor.from_pretrained(tiny_clip_dir)
    with torch.no_grad():
        tok = processor.tokenizer(["a photo of the cat"], return_tensors="pt")
        text = model.text_projection(model.text_model(input_ids=tok["input_ids"]).pooler_output)[0]
        img = model.visual_projection(model.vision_model(pixel_values=_pixels(processor, images)).pooler_output)
    expected = F.cosine_similarity(img, text.unsqueeze(0), dim=1).mean()
    assert got == pytest.approx(float(expected), abs=1e-5)


def test_dino_identity_uses_the_cls_token_of_the_last_layer(tiny_dino_dir):
    from transformers import ViTImageProcessor, ViTModel

    samples, refs = _pictures(3, 2), _pictures(4, 3)
    scorer = load_dino(str(tiny_dino_dir))
    got = image_similarity(scorer.image_features(samples), scorer.image_features(refs))

    model, processor = ViTModel.from_pretrained(tiny_dino_dir), ViTImageProcessor.from_pretrained(tiny_dino_dir)
    with torch.no_grad():
        a = model(pixel_values=_pixels(processor, samples)).last_hidden_state[:, 0]
        b = model(pixel_values=_pixels(processor, refs)).last_hidden_state[:, 0]
    expected = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    assert got == pytest.approx(float(expected.mean()), abs=1e-5)


def test_identical_pictures_score_one(tiny_dino_dir):
    scorer = load_dino(str(tiny_dino_dir))
    pics = _pictures(5, 1)
    assert image_similarity(scorer.image_features(pics), scorer.image_features(pics)) == pytest.approx(1.0, abs=1e-5)


def test_a_hub_id_that_is_not_cached_offline_is_one_clear_error():
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE is set.*--clip"):
        load_clip("openai/clip-vit-large-patch14")


def test_a_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no such folder"):
        load_dino(str(tmp_path / "nope") + "/")
