"""Read a training config written for the paper's own code (rinongal/textual_inversion, InvokeAI 2.x):
`configs/stable-diffusion/v1-finetune.yaml` and its kin, in their OmegaConf layout.

Each key that means something here is mapped to its textinv key; the rest (the model's architecture, which
textinv reads from the model itself, Lightning's trainer plumbing) is listed back so the user hears, in one
notice, what was not used.
"""

from __future__ import annotations

from typing import Any

_PERSONALIZATION = "model.params.personalization_config.params."
_TRAIN_DATA = "data.params.train.params."
_IMAGE_LOGGER = "lightning.callbacks.image_logger.params."

# paper key (dotted path) -> textinv key
KEY_MAP = {
    "model.base_learning_rate": "optim.learning_rate",
    "model.params.parameterization": "model.prediction_type",
    "model.params.embedding_reg_weight": "optim.embedding_reg_weight",
    _PERSONALIZATION + "placeholder_strings": "personalization.placeholder_strings",
    _PERSONALIZATION + "initializer_words": "personalization.initializer_words",
    _PERSONALIZATION + "num_vectors_per_token": "personalization.num_vectors_per_token",
    "data.params.batch_size": "data.batch_size",
    _TRAIN_DATA + "size": "data.resolution",
    _TRAIN_DATA + "repeats": "data.repeats",
    _TRAIN_DATA + "flip_p": "data.flip_p",
    _TRAIN_DATA + "center_crop": "data.center_crop",
    _TRAIN_DATA + "data_root": "data.paths",
    "lightning.trainer.max_steps": "train.max_steps",
    "lightning.trainer.accumulate_grad_batches": "optim.gradient_accumulation_steps",
    "lightning.modelcheckpoint.params.every_n_train_steps": "log.save_every",
    _IMAGE_LOGGER + "batch_frequency": "log.image_every",
    _IMAGE_LOGGER + "max_images": "log.num_images",
}
# Blocks that describe a network (read from the model itself here) or the validation data: one notice line each.
_BLOCKS = {"unet_config", "first_stage_config", "cond_stage_config", "validation"}
_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": None}


def is_paper_layout(data: Any) -> bool:
    """True for the paper code's OmegaConf layout (`model.params...`, `lightning:`), not textinv's own."""
    if not isinstance(data, dict):
        return False
    model = data.get("model")
    return "lightning" in data or (isinstance(model, dict) and ("params" in model or "base_learning_rate" in model))


def from_paper_layout(data: dict) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(textinv's nested config dict, the paper keys that were not used) for a config in the paper's layout."""
    out: dict[str, dict[str, Any]] = {}
    ignored: list[str] = []
    for path, value in _leaves(data):
        key = KEY_MAP.get(path)
        if key is None:
            ignored.append(path)
            continue
        if key == "model.prediction_type":
            if _PREDICTION.get(value) is None:
                ignored.append(path)
                continue
            value = _PREDICTION[value]
        if key == "data.paths":
            value = [value] if isinstance(value, str) else value
        section, name = key.split(".")
        out.setdefault(section, {})[name] = value
    style_data = "personalized_style" in str(_get(data, "data.params.train.target") or "")
    if style_data:
        out.setdefault("personalization", {})["learnable_property"] = "style"
    return out, _summarise(ignored, skip={"data.params.train.target"} if style_data else set())


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if not isinstance(node, dict) or not node:
        return [(prefix, node)]
    found = []
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        found += [(path, value)] if path in KEY_MAP else _leaves(value, path)
    return found


def _get(data: dict, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _summarise(paths: list[str], skip: set[str]) -> list[str]:
    """The ignored keys, each whole block that describes a network or the validation set shown once as `block.*`."""
    shown: list[str] = []
    for path in paths:
        if path in skip:
            continue
        parts = path.split(".")
        block = next((i for i, p in enumerate(parts[:-1]) if p in _BLOCKS), None)
        short = ".".join(parts[: block + 1]) + ".*" if block is not None else path
        if short not in shown:
            shown.append(short)
    return shown
