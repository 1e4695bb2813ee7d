"""Load Stable Diffusion pipelines from wherever users keep them, and add embeddings to their text encoders.

A model is a hub id (through the Hugging Face cache, so it works offline once cached), a local diffusers folder,
or a single `.ckpt`/`.safetensors` file as the original code used (read through diffusers' single-file loader,
with `model_config` naming a local diffusers folder for its config so that no network is needed). The library
never prints: anything the user should hear about comes back as a string in `pipe.textinv.warnings` or from
`add_embeddings`/`check_prompt`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from textinv.embeddings import Embedding, family_for, load_embedding
from textinv.errors import ConfigError, EmbeddingFormatError, ModelError
from textinv.formats.container import detect_container

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth")
EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors", ".png")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Words a user means as placeholders: `<cat-toy>` (sd-concepts) or a bare `*` (the paper code).
_PLACEHOLDER_LIKE = re.compile(r"<[^<>\s]+>|(?<!\S)\*(?!\S)")
_DTYPES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


@dataclass
class ModelInfo:
    """What was loaded, for metadata and messages; kept on the pipeline as `pipe.textinv`."""

    name: str  # what PNG metadata calls the model: hub id, folder name or file stem
    source: str  # the resolved location
    kind: str  # 'hub' | 'folder' | 'single-file' | 'toy'
    family: str  # 'SD1.x' | 'SD2.x' | 'SDXL' | 'unknown (dim N)'
    warnings: list[str] = field(default_factory=list)
    embeddings: dict[str, LoadedToken] = field(default_factory=dict)  # placeholder -> what was loaded
    base_scheduler: object | None = None  # the model's own scheduler, to return to after --scheduler
    variants: dict[str, object] = field(
        default_factory=dict, repr=False
    )  # txt2img/img2img views of one model


@dataclass
class LoadedToken:
    placeholder: str
    token_ids: list[int]
    source: str  # the file it came from
    hash: str  # sha256 of the file, first 12 hex digits, as AUTOMATIC1111 writes it
    vectors: torch.Tensor  # [n, dim] float32 as loaded, for checking a reload


# --- devices --------------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: `device` if given (and present), else CUDA, then Apple MPS, then the CPU."""
    if device is None or str(device) in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(str(device))
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu or leave it out")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {device}: Apple MPS is not available here; use --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Half precision on a GPU, full precision on the CPU (fp16 convolutions there are slow or missing)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; use fp16, bf16 or fp32") from None


# --- finding and loading a model ------------------------------------------------------------------------------


def toy_model_dir() -> Path:
    import textinv.toy

    return Path(textinv.toy.__file__).parent / "model"


def resolve_source(source: str | Path | None) -> tuple[str, str]:
    """(kind, location) for `source`, `$TEXTINV_MODEL` or the default: kind is hub | folder | single-file | toy."""
    source = str(source or os.environ.get("TEXTINV_MODEL") or DEFAULT_MODEL)
    if source == "toy":
        folder = toy_model_dir()
        if not (folder / "model_index.json").is_file():
            raise ModelError(
                f"the toy model is not in this install ({folder} is missing); "
                "build it with `make toy-model` or pass --model with a hub id or a local folder"
            )
        return "toy", str(folder)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError(
                f"{path} is a folder but not a diffusers model (no model_index.json); pass a diffusers folder, "
                "a .ckpt/.safetensors file or a hub id"
            )
        return "folder", str(path)
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelError(
                f"{path}: not a model file; --model takes a .ckpt/.safetensors file, a folder or a hub id"
            )
        return "single-file", str(path)
    looks_like_path = path.suffix.lower() in SINGLE_FILE_SUFFIXES or source.startswith((".", "/", "~"))
    if looks_like_path or not _HUB_ID.match(source):
        raise ModelError(f"model {source}: no such file or folder (and not a hub id like {DEFAULT_MODEL})")
    return "hub", source


def load_pipeline(
    source: str | Path | None = None,
    *,
    model_config: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    img2img: bool = False,
):
    """Load a Stable Diffusion (1.x, 2.x or XL) pipeline, on `device` in `dtype`, ready to generate.

    Args:
        source: hub id, diffusers folder, `.ckpt`/`.safetensors` file or 'toy'; None reads $TEXTINV_MODEL, then
            falls back to DEFAULT_MODEL.
        model_config: for a single file, a local diffusers folder of the same family whose configs (and
            tokenizer) describe it, so that loading needs no network.
        img2img: return the image-to-image pipeline (sharing the same weights; see `as_img2img`).
    """
    kind, location = resolve_source(source)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    _quiet_diffusers()
    notes: list[str] = []
    if kind == "single-file":
        pipe = _load_single_file(Path(location), model_config, torch_dtype, notes)
        name = Path(location).stem
    elif kind == "hub":
        pipe = _load_from_hub(location, torch_dtype)
        name = location
    else:
        pipe = _load_folder(Path(location), torch_dtype)
        name = "toy" if kind == "toy" else Path(location).name
    pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    pipe.textinv = ModelInfo(name=name, source=location, kind=kind, family=model_family(pipe), warnings=notes)
    return as_img2img(pipe) if img2img else pipe


def as_img2img(pipe):
    """The image-to-image pipeline over the same modules (no copy, no reload; added tokens stay)."""
    return _variant(pipe, "img2img", "AutoPipelineForImage2Image")


def as_txt2img(pipe):
    """The text-to-image pipeline over the same modules."""
    return _variant(pipe, "txt2img", "AutoPipelineForText2Image")


def _variant(pipe, kind: str, auto_cls: str):
    is_img2img = "Img2Img" in type(pipe).__name__
    if is_img2img == (kind == "img2img"):
        return pipe
    info: ModelInfo | None = getattr(pipe, "textinv", None)
    if info is not None and kind in info.variants:
        return info.variants[kind]
    import diffusers  # the auto pipelines import every pipeline diffusers has (1-2 s): only when switching

    out = getattr(diffusers, auto_cls).from_pipe(pipe)
    out.set_progress_bar_config(disable=True)
    if info is not None:
        out.textinv = info
        info.variants[kind] = out
        info.variants["img2img" if kind == "txt2img" else "txt2img"] = pipe
    return out


def model_family(pipe) -> str:
    """SD1.x (768-dim text), SD2.x (1024) or SDXL (two encoders), from the text encoders' widths."""
    dim = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    te2 = getattr(pipe, "text_encoder_2", None)
    dim_2 = te2.get_input_embeddings().weight.shape[1] if te2 is not None else None
    return family_for(dim, dim_2)


def _quiet_diffusers() -> None:
    """diffusers and transformers print loading bars and notices; the CLI reports progress itself."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # diffusers 0.42 renamed torch_dtype to dtype; torch_dtype works in every version we support (>= 0.30)
    warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)


def _hub_cache() -> str:
    """The hub cache as the environment says now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _load_folder(folder: Path, torch_dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(
            str(folder), torch_dtype=torch_dtype, local_files_only=True, **_no_safety_checker(folder)
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"{folder}: not a loadable diffusers model ({_first_line(e)})") from None


def _no_safety_checker(folder: Path) -> dict:
    """Skip the NSFW checker (as InvokeAI's --no-nsfw_checker and AUTOMATIC1111 do): it is a 1.2 GB model."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}
    return {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}


def _load_from_hub(repo_id: str, torch_dtype: torch.dtype):
    from diffusers import DiffusionPipeline
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    cache = _hub_cache()
    try:
        folder = snapshot_download(
            repo_id, cache_dir=cache, local_files_only=True, allow_patterns=["model_index.json"]
        )
    except (OSError, ValueError):
        folder = None
    if folder is None or not (Path(folder) / "model_index.json").is_file():
        if _offline():
            raise ModelError(
                f"model {repo_id} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1 forbids downloading "
                "it; connect once without HF_HUB_OFFLINE, pass a local folder or .safetensors with --model, "
                "or try the tool with --model toy"
            )
    try:
        kwargs = {"safety_checker": None, "requires_safety_checker": False}
        try:
            return DiffusionPipeline.from_pretrained(
                repo_id, torch_dtype=torch_dtype, cache_dir=cache, local_files_only=True, **kwargs
            )
        except (OSError, ValueError):
            if _offline():
                raise
        return DiffusionPipeline.from_pretrained(repo_id, torch_dtype=torch_dtype, cache_dir=cache, **kwargs)
    except GatedRepoError:
        raise ModelError(
            f"model {repo_id} is gated on the hub: accept its license on huggingface.co, then `hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"no model {repo_id} on the Hugging Face hub; check the id (e.g. {DEFAULT_MODEL})"
        ) from None
    except OSError:
        raise ModelError(
            f"model {repo_id} is not in the Hugging Face cache ({cache}) and could not be downloaded (no network, "
            "or no such model); check the id and the network, pass a local folder or .safetensors with --model, "
            "or try the tool with --model toy"
        ) from None


# --- single-file checkpoints ----------------------------------------------------------------------------------


def _load_single_file(
    path: Path, model_config: str | Path | None, torch_dtype: torch.dtype, notes: list[str]
):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    config = Path(model_config).expanduser() if model_config else None
    if config is not None and not (config / "model_index.json").is_file():
        raise ModelError(
            f"--model-config {config}: not a diffusers model folder (no model_index.json); pass the folder of a "
            "diffusers model of the same family, e.g. a downloaded stable-diffusion-v1-5"
        )
    with tempfile.TemporaryDirectory(prefix="textinv-ckpt-") as tmp:
        readable, state = _checkpoint_for_diffusers(path, Path(tmp), notes)
        from_cache = config is None
        if config is None:
            config = _cached_config_for(path, state)  # None: online, let diffusers fetch it
        if config is not None:
            cls_name = json.loads((config / "model_index.json").read_text()).get("_class_name", "")
            is_xl = "XL" in cls_name
        else:
            is_xl = any(k.startswith("conditioner.embedders.1.") for k in state)
        pipe_cls = StableDiffusionXLPipeline if is_xl else StableDiffusionPipeline
        kwargs: dict = {"torch_dtype": torch_dtype}
        if pipe_cls is StableDiffusionPipeline:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        if config is not None:
            kwargs.update(config=str(config), local_files_only=True)
        try:
            return pipe_cls.from_single_file(str(readable), **kwargs)
        except Exception as e:  # diffusers raises many kinds here (OSError, ValueError, KeyError, its own)
            if from_cache:
                raise ModelError(
                    f"{path.name}: could not load it with the config diffusers picks for it ({_first_line(e)[:100]}); "
                    "pass --model-config DIR, a local diffusers folder of the same family (SD1.x, SD2.x or SDXL)"
                ) from None
            raise ModelError(
                f"{path.name}: does not load with the config in {config} ({_first_line(e)[:120]}); "
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
            snapshot_download(repo, cache_dir=_hub_cache(), local_files_only=True, allow_patterns=["*.json"])
        )
        if (folder / "model_index.json").is_file():
            return folder
    except (OSError, ValueError):
        pass
    if _offline():
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
                f"{path.name}: unreadable safetensors file ({_first_line(e)}); download it again"
            ) from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=container == "torch-zip")
        return path, _state_dict(data, path)
    except pickle.UnpicklingError:
        pass
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ModelError(
            f"{path.name}: truncated or not a torch checkpoint ({_first_line(e)[:120]})"
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
            found = _allowed(module, name)
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
            f"{path.name}: cannot be read without running its pickled code ({_first_line(e)[:100]}); "
            "convert it to .safetensors with a tool you trust"
        ) from None
    return data, skipped


# --- embeddings -----------------------------------------------------------------------------------------------


def find_embedding_files(spec: str | Path, *, folder: Path = Path("embeddings")) -> list[Path]:
    """`--embedding` as given: a file, a folder of embedding files, a concept folder, or a concept name."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        if (path / "learned_embeds.bin").is_file() or (path / "learned_embeds.safetensors").is_file():
            return [path]  # an sd-concepts-library folder
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in EMBEDDING_SUFFIXES)
        concept_dirs = sorted(p for p in path.iterdir() if p.is_dir() and any(p.glob("learned_embeds.*")))
        if not files and not concept_dirs:
            raise EmbeddingFormatError(
                f"{path}: a folder with no embedding files (.pt, .bin, .safetensors, .png)"
            )
        return files + concept_dirs
    found = _find_concept(str(spec), folder)
    if found is not None:
        return [found]
    raise EmbeddingFormatError(
        f"--embedding {spec}: no such file or folder, and no concept {spec!r} in {folder}/; "
        f"fetch it with `textinv fetch {spec}` or give the path of an embedding file"
    )


def _find_concept(name: str, folder: Path) -> Path | None:
    try:
        from textinv.concepts import find_local
    except ImportError:
        find_local = None
    if find_local is not None:
        return find_local(name, folder)
    stem = name.strip("<>")
    candidates = [folder / stem] + sorted(folder.glob(f"{stem}.*")) if folder.is_dir() else []
    return next((p for p in candidates if p.exists()), None)


def load_embeddings(
    specs: list[str | Path], *, tokens: list[str] | None = None
) -> list[tuple[Path, Embedding]]:
    """Read every `--embedding`, renaming placeholders to `tokens` (one per embedding file) when given."""
    files = [f for spec in specs for f in find_embedding_files(spec)]
    loaded = [(f, load_embedding(f)) for f in files]
    if tokens:
        if len(tokens) != len(loaded):
            raise ConfigError(
                f"--token was given {len(tokens)} times for {len(loaded)} embedding files; give one --token per file"
            )
        for (f, emb), new in zip(loaded, tokens, strict=True):
            if len(emb.tokens) != 1:
                names = ", ".join(t.name for t in emb.tokens)
                raise ConfigError(
                    f"--token {new}: {f.name} holds {len(emb.tokens)} placeholders ({names}), not one"
                )
            emb.tokens[0].name = new
    return loaded


def add_embeddings(pipe, embeddings: list[tuple[Path, Embedding]]) -> list[str]:
    """Add each placeholder to the tokenizer(s) and text encoder(s); returns the placeholders now usable.

    A placeholder with n vectors becomes tokens `name`, `name_1` ... `name_{n-1}` (diffusers' convention), and
    diffusers' pipelines expand `name` in a prompt to all of them. Loading the same file again is a no-op.
    """
    info: ModelInfo = pipe.textinv
    te, te2 = pipe.text_encoder, getattr(pipe, "text_encoder_2", None)
    dim = te.get_input_embeddings().weight.shape[1]
    dim_2 = te2.get_input_embeddings().weight.shape[1] if te2 is not None else None
    added: list[str] = []
    for path, emb in embeddings:
        for tok in emb.tokens:
            _check_fits(path, emb, tok, dim, dim_2, info.family)
            prior = info.embeddings.get(tok.name)
            if prior is not None:
                if prior.vectors.shape == tok.vectors.shape and torch.equal(prior.vectors, tok.vectors):
                    continue
                raise ModelError(
                    f"placeholder {tok.name} is in both {Path(prior.source).name} and {path.name}; "
                    "rename one with --token NEW (one --token per --embedding)"
                )
            names = [tok.name] + [f"{tok.name}_{i}" for i in range(1, tok.num_vectors)]
            ids = _add_tokens(pipe.tokenizer, te, names, tok.vectors)
            if te2 is not None:
                ids_2 = _add_tokens(pipe.tokenizer_2, te2, names, tok.vectors_2)
                if ids_2 != ids:  # both tokenizers share CLIP's vocabulary in every SDXL checkpoint
                    raise ModelError(
                        f"{tok.name}: the two SDXL tokenizers gave different ids; the model is inconsistent"
                    )
            info.embeddings[tok.name] = LoadedToken(
                placeholder=tok.name,
                token_ids=ids,
                source=str(path),
                hash=file_hash(path),
                vectors=tok.vectors.clone(),
            )
            added.append(tok.name)
    return added


def _check_fits(path: Path, emb: Embedding, tok, dim: int, dim_2: int | None, model_family: str) -> None:
    tok_dim_2 = tok.vectors_2.shape[1] if tok.vectors_2 is not None else None
    if tok.dim == dim and tok_dim_2 == dim_2:
        return
    emb_family = family_for(tok.dim, tok_dim_2)
    raise ModelError(
        f"{Path(path).name}: embedding {tok.name} is {_label(emb_family, tok.dim, tok_dim_2)} but the model is "
        f"{_label(model_family, dim, dim_2)}; use an embedding trained for "
        f"{'this model' if model_family.startswith('unknown') else model_family}, or a model of the embedding's "
        "family with --model"
    )


def _label(family: str, dim: int, dim_2: int | None) -> str:
    dims = f"{dim}+{dim_2}-dim" if dim_2 else f"{dim}-dim"
    return f"{dims} (no known family)" if family.startswith("unknown") else f"{family} ({dims})"


def _add_tokens(tokenizer, text_encoder, names: list[str], vectors: torch.Tensor) -> list[int]:
    tokenizer.add_tokens(names)
    ids = tokenizer.convert_tokens_to_ids(names)
    # A placeholder already in the vocabulary (the paper's `*` is one of CLIP's byte tokens) keeps its id: its
    # row is replaced, as the paper code and InvokeAI did.
    if max(ids) >= text_encoder.get_input_embeddings().weight.shape[0]:
        try:  # the new rows are overwritten below, so skip transformers' mean/covariance initialisation
            text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        except TypeError:  # transformers < 4.46
            text_encoder.resize_token_embeddings(len(tokenizer))
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = vectors.to(device=weight.device, dtype=weight.dtype)
    return ids


def check_prompt(pipe, prompt: str) -> list[str]:
    """Warnings for words that look like placeholders (`<foo>`, `*`) but name no loaded embedding."""
    info = getattr(pipe, "textinv", None)
    loaded = set(info.embeddings) if info is not None else set()
    unknown = dict.fromkeys(
        m.group(0) for m in _PLACEHOLDER_LIKE.finditer(prompt) if m.group(0) not in loaded
    )
    hint = (
        f"loaded: {', '.join(sorted(loaded))}"
        if loaded
        else "no embedding is loaded; add one with --embedding"
    )
    return [f"{word} is not a loaded placeholder, so it is used as plain text ({hint})" for word in unknown]


def file_hash(path: str | Path) -> str:
    """sha256 of a file (first 12 hex digits, AUTOMATIC1111's embedding short hash); for a folder, its files."""
    import hashlib

    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
