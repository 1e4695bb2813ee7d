"""Single-file checkpoints (`model.ckpt`, `*.safetensors`) as the original code and AUTOMATIC1111 keep them.

diffusers' single-file loader reads them; this module makes that safe (no pickled code runs) and offline
(`model_config` names a local diffusers folder for the configs, else the hub cache is searched).
"""

from __future__ import annotations

import json
import pickle
import tempfile
from pathlib import Path

import torch

from textinv import hub
from textinv.errors import ModelError, first_line
from textinv.formats.container import detect_container
from textinv.models.peek import check_config_folder, kind_of_checkpoint, kind_of_index

# The diffusers pipeline that reads a single file of each architecture (`models.peek.KINDS`). SD3.5's and Flux.1's
# files often leave out their text encoders: --model-config names the folder they come from.
_PIPELINES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
              "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}


def load_single_file(
    path: Path, model_config: str | Path | None, torch_dtype: torch.dtype, notes: list[str]
):
    import diffusers

    config = Path(model_config).expanduser() if model_config else None
    if config is not None:
        check_config_folder(config)
    with tempfile.TemporaryDirectory(prefix="textinv-ckpt-") as tmp:
        readable, state = _checkpoint_for_diffusers(path, Path(tmp), notes)
        from_cache = config is None
        if config is None:
            config = _cached_config_for(path, state)  # None: online, let diffusers fetch it
        if config is not None:
            kind = kind_of_index(json.loads((config / "model_index.json").read_text()))
        else:
            kind = kind_of_checkpoint(state)
        pipe_cls = getattr(diffusers, _PIPELINES[kind])
        kwargs: dict = {"torch_dtype": torch_dtype}
        if kind == "sd":
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        if config is not None:
            kwargs.update(config=str(config), local_files_only=True)
        try:
            return pipe_cls.from_single_file(str(readable), **kwargs)
        except Exception as e:  # diffusers raises many kinds here (OSError, ValueError, KeyError, its own)
            if from_cache:
                raise ModelError(
                    f"{path.name}: could not load it with the config diffusers picks for it ({first_line(e, 100)}); "
                    "pass --model-config DIR, a local diffusers folder of the same family (SD1.x, SD2.x or SDXL)"
                ) from None
            raise ModelError(
                f"{path.name}: does not load with the config in {config} ({first_line(e, 120)}); "
                "is --model-config the same family as the checkpoint?"
            ) from None


def _cached_config_for(path: Path, state) -> Path | None:
    """The hub config diffusers would use for this checkpoint, from the local cache; None when it may download."""
    from diffusers.loaders.single_file_utils import fetch_diffusers_config
    from huggingface_hub import snapshot_download

    try:
        repo = fetch_diffusers_config(state)["pretrained_model_name_or_path"]
    except Exception:
        raise ModelError(
            f"{path.name}: not a checkpoint diffusers recognises; pass --model-config DIR, a local diffusers "
            "folder of the same family (SD1.x, SD2.x or SDXL)"
        ) from None
    try:
        folder = Path(
            snapshot_download(repo, cache_dir=hub.cache_dir(), local_files_only=True, allow_patterns=["*.json"])
        )
        if (folder / "model_index.json").is_file():
            return folder
    except (OSError, ValueError):
        pass
    if hub.offline():
        raise ModelError(
            f"{path.name} needs the config of {repo}, which is not in the Hugging Face cache, and HF_HUB_OFFLINE=1 "
            "forbids fetching it; pass --model-config DIR, a local diffusers folder of the same family"
        )
    return None


def _checkpoint_for_diffusers(path: Path, tmp: Path, notes: list[str]) -> tuple[Path, dict]:
    """A file diffusers can read without running pickle code, and its tensors (loaded lazily where possible).

    A `.safetensors` file is used as it is. A `.ckpt` that `torch.load(weights_only=True)` reads is too
    (diffusers reads it that way). Many older checkpoints also pickle PyTorch Lightning callbacks and other
    objects; those are read with every non-tensor object replaced by an inert stand-in, and the weights are
    written to a temporary .safetensors file for diffusers.
    """
    container = detect_container(path)
    if path.suffix.lower() == ".safetensors" or container == "safetensors":
        try:
            return path, _LazySafetensors(path)
        except Exception as e:
            raise ModelError(
                f"{path.name}: unreadable safetensors file ({first_line(e)}); download it again"
            ) from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=container == "torch-zip")
        return path, _state_dict(data, path)
    except pickle.UnpicklingError:
        pass
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ModelError(
            f"{path.name}: truncated or not a torch checkpoint ({first_line(e, 120)})"
        ) from None
    data, skipped = _load_with_stand_ins(path)
    state = _state_dict(data, path)
    notes.append(
        f"{path.name} also holds Python objects ({', '.join(sorted(skipped)[:3])}); they were skipped without "
        "running them. Convert it once to .safetensors to load it faster"
    )
    from safetensors.torch import save_file

    plain = {k: v.contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    out = tmp / (path.stem + ".safetensors")
    save_file(plain, str(out))
    return out, plain


class _LazySafetensors(dict):
    """The keys of a .safetensors file, each tensor read only when asked for (diffusers peeks at a few)."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self._path = str(path)
        with safe_open(self._path, framework="pt") as f:
            super().__init__(dict.fromkeys(f.keys()))

    def __getitem__(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        if key not in self:
            raise KeyError(key)
        with safe_open(self._path, framework="pt") as f:
            return f.get_tensor(key)

    def get(self, key, default=None):
        return self[key] if key in self else default


def _state_dict(data, path: Path) -> dict:
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not any(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelError(
            f"{path.name}: holds no model weights; is it an embedding? Pass those with --embedding"
        )
    return data


def _load_with_stand_ins(path: Path):
    """torch.load with the embeddings' restricted unpickler, where any other global becomes an inert class."""
    import types

    from textinv.safe_pickle import RestrictedUnpickler, _allowed

    skipped: set[str] = set()

    class _StandIn:
        def __new__(cls, *args, **kwargs):
            return object.__new__(cls)

        def __init__(self, *args, **kwargs) -> None:
            pass

        def __setstate__(self, state) -> None:
            pass

        def __call__(self, *args, **kwargs):
            return self

    class _Unpickler(RestrictedUnpickler):
        def find_class(self, module: str, name: str):
            found = _allowed(module, name, model=True)
            if found is not None:
                return found
            skipped.add(f"{module}.{name}")
            return type(name, (_StandIn,), {})

    module = types.ModuleType("textinv_stand_in_pickle")
    module.Unpickler = _Unpickler
    module.load = lambda f, **kw: _Unpickler(f, **kw).load()
    module.__name__ = "pickle"
    try:
        data = torch.load(path, map_location="cpu", pickle_module=module, weights_only=False)
    except Exception as e:
        raise ModelError(
            f"{path.name}: cannot be read without running its pickled code ({first_line(e, 100)}); "
            "convert it to .safetensors with a tool you trust"
        ) from None
    return data, skipped
