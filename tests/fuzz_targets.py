"""Fuzz targets for every reader of files from elsewhere (issue 25): embedding files (.pt, .bin, .safetensors,
PNG), sd-concepts folders, YAML configs, a run's state/ files and the PNG parameters chunk.

Each target has seeds (valid inputs: files textinv writes, and the real fixtures in ../shared when present), a
Hypothesis strategy that mutates them (bytes flipped, cut, inserted, repeated, integers overwritten with edge
values; inside a container too: a zip member, the safetensors header, a PNG text chunk, so that a mutation
reaches the reader behind the container's checks), and a `read` that runs the reader on one input in a fresh
folder. `outcome` runs it under a watchdog and sorts what happened:

    "result"  the reader returned
    "clean"   one TextinvError, one line: the user is told what is wrong
    "dirty"   anything else: another exception (a traceback for the user), a message of several lines, a hang

Used by tests/test_fuzz.py (small budgets, in the fast suite) and bench/fuzz.py (`make fuzz`: larger budgets, in
worker processes whose peak memory is measured).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import signal
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from hypothesis import strategies as st

from textinv.errors import TextinvError

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "fixtures" / "real-embeddings"  # ../shared beside the project, when it is there
HANG_SECONDS = 20  # a reader takes milliseconds on these inputs; 20 s means it would never end
EDGE_INTS = [0, 1, 2, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**36, 2**62, 2**63 - 1, 2**64 - 1]


# --- mutations ---------------------------------------------------------------------------------------------------


@st.composite
def mutated(draw, data: bytes, max_ops: int = 4) -> bytes:
    """`data` with 1 to `max_ops` random edits: flip, overwrite with an edge integer, insert, delete, repeat, cut."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, max_ops))):
        n = len(out)
        op = draw(st.sampled_from(["flip", "int", "insert", "delete", "repeat", "cut"] if n else ["insert"]))
        at = draw(st.integers(0, max(0, n - 1)))
        if op == "flip":
            out[at] = draw(st.integers(0, 255))
        elif op == "int":
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.sampled_from(EDGE_INTS)) % 2 ** (8 * width)
            out[at:at + width] = value.to_bytes(width, draw(st.sampled_from(["little", "big"])))
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del out[at:at + draw(st.integers(1, 64))]
        elif op == "repeat":
            length = draw(st.integers(1, 256))
            out[at:at] = out[at:at + length] * draw(st.integers(1, 8))
        else:
            del out[draw(st.integers(0, n)):]
    return bytes(out)


def _rezip(data: bytes, member_filter: Callable[[str], bool], mutate: Callable[[bytes], bytes]) -> bytes:
    """A torch zip with the first member matching `member_filter` replaced by `mutate(member)`; stored, as torch
    writes it, so that the reader's zip checks pass and the mutation reaches the unpickler or the tensor data."""
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    done = False
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = src.read(info)
            if not done and member_filter(info.filename):
                body, done = mutate(body), True
            dst.writestr(info.filename, body)
    return buf.getvalue()


@st.composite
def mutated_zip_member(draw, data: bytes) -> bytes:
    """A torch zip whose pickle (data.pkl), a tensor's bytes or a small record is mutated inside a valid zip."""
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    name = draw(st.sampled_from(names))
    body = zipfile.ZipFile(io.BytesIO(data)).read(name)
    new = draw(mutated(body))
    return _rezip(data, lambda n: n == name, lambda _: new)


@st.composite
def mutated_safetensors_header(draw, data: bytes) -> bytes:
    """A safetensors file whose JSON header has one value replaced (a shape, an offset, a dtype, metadata), the
    length prefix kept consistent or not."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    name = draw(st.sampled_from(sorted(header)))
    entry = header[name]
    weird = st.one_of(st.integers(-2**63, 2**64), st.sampled_from(EDGE_INTS), st.text(max_size=8), st.none(),
                      st.lists(st.integers(-5, 2**40), max_size=4), st.floats(), st.booleans(),
                      st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
    if isinstance(entry, dict) and entry:
        key = draw(st.sampled_from(sorted(entry)))
        if key == "shape" and draw(st.booleans()):
            entry[key] = draw(st.lists(st.sampled_from(EDGE_INTS), min_size=1, max_size=3))
        else:
            entry[key] = draw(weird)
    else:
        header[name] = draw(weird)
    raw = json.dumps(header).encode()
    length = len(raw) if draw(st.booleans()) else draw(st.sampled_from(EDGE_INTS))
    return struct.pack("<Q", length % 2**64) + raw + body


def png_with_text(chunks: dict[str, str], size: int = 8) -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (10, 200, 30)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _png_text(data: bytes) -> dict[str, str]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return dict(im.text)


@st.composite
def mutated_png_chunk(draw, data: bytes, key: str, b64: bool) -> bytes:
    """A PNG (valid CRCs) whose text chunk `key` is mutated: the decoded JSON of an embedding chunk (`b64`) or
    the text of a parameters chunk."""
    text = _png_text(data)
    value = text[key].encode()
    if b64:
        value = base64.b64decode(value)
    value = draw(mutated(value))
    text[key] = base64.b64encode(value).decode() if b64 and draw(st.booleans()) else value.decode("latin-1")
    return png_with_text(text)


# --- targets -----------------------------------------------------------------------------------------------------


@dataclass
class Target:
    """One reader: its seeds, how to mutate them, and how to read one input (written by `write` into a folder)."""

    name: str
    seeds: Callable[[], list[bytes]]
    strategy: Callable[[bytes], st.SearchStrategy[bytes]]
    read: Callable[[Path], object]
    suffix: str = ".pt"
    built: Callable[[], st.SearchStrategy[bytes]] | None = None  # inputs made from random content, not mutated

    def inputs(self) -> st.SearchStrategy[bytes]:
        mutations = st.sampled_from(self.seeds()).flatmap(self.strategy)
        return st.one_of(mutations, self.built()) if self.built else mutations


def _embedding(name: str = "<cat>", width: int = 16, n: int = 2, width_2: int | None = None):
    import torch

    from textinv.formats.embedding import Embedding, Token

    g = torch.Generator().manual_seed(len(name) + width)
    second = torch.randn(n, width_2, generator=g) if width_2 else None
    return Embedding([Token(name, torch.randn(n, width, generator=g), second)], name="cat", step=12,
                     init_words={name: "cat"})


def _written(fmt: str, suffix: str, **kwargs) -> bytes:
    from textinv.formats.files import save_embedding

    with tempfile.TemporaryDirectory() as tmp:
        path = save_embedding(_embedding(**kwargs), Path(tmp) / f"e{suffix}", format=fmt)
        return path.read_bytes()


def _real(*suffixes: str) -> list[bytes]:
    if not REAL.is_dir():
        return []
    return [p.read_bytes() for p in sorted(REAL.iterdir())
            if p.is_file() and p.suffix in suffixes and p.stat().st_size < 200_000]


@cache
def pt_seeds() -> list[bytes]:
    import torch

    legacy = io.BytesIO()
    torch.save({"string_to_param": {"*": torch.ones(2, 16)}, "name": "x"}, legacy, _use_new_zipfile_serialization=False)
    two = _embedding()
    two.tokens.append(_embedding("<dog>").tokens[0])
    from textinv.formats.files import save_embedding

    with tempfile.TemporaryDirectory() as tmp:
        paper = save_embedding(two, Path(tmp) / "two.pt", format="paper-pt").read_bytes()
    return [_written("a1111-pt", ".pt"), paper, legacy.getvalue(), _written("a1111-pt", ".pt", width=8, width_2=16),
            *_real(".pt")]


@cache
def bin_seeds() -> list[bytes]:
    return [_written("diffusers-bin", ".bin"), *_real(".bin")]


@cache
def safetensors_seeds() -> list[bytes]:
    return [_written("diffusers-safetensors", ".safetensors"), _written("kohya", ".safetensors"),
            _written("diffusers-safetensors", ".safetensors", width=8, width_2=16), *_real(".safetensors")]


@cache
def png_seeds() -> list[bytes]:
    return [_written("a1111-png", ".png"), *_real(".png")]


# Random content in the layouts the readers look for: the keys they know, values of any type, tensors of any
# shape and dtype (0-d, empty, 3-d, integer, boolean, half), written as a real writer would.
KEYS = ["string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name", "emb_params",
        "clip_l", "clip_g", "<cat>", "*", "t5xxl", "_parameters", "model.layer.weight", "lora_te_x.alpha"]


def _tensors() -> st.SearchStrategy:
    import torch

    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.uint8, torch.bool]
    shapes = st.lists(st.sampled_from([0, 1, 2, 3, 4, 8, 16, 32, 64]), max_size=3)
    special = st.sampled_from([float("nan"), float("inf"), 0.0, 1e30, -1.0])
    return st.tuples(shapes, st.sampled_from(dtypes), special, st.booleans()).map(
        lambda t: (torch.full(t[0], t[2]) if t[3] else torch.ones(t[0])).to(t[1]))


def _values(tensors: bool = True) -> st.SearchStrategy:
    leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=12),
                       *([_tensors()] if tensors else []))
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=3)),
        max_leaves=8)


def _torch_saved(obj, legacy: bool) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _layouts() -> list[dict]:
    """The dicts each reader recognises, valid as written (AUTOMATIC1111's, ours, diffusers', SDXL's, kohya's)."""
    import torch

    t = torch.randn(2, 16)
    return [{"string_to_token": {"*": 265}, "string_to_param": {"*": t}, "name": "x", "step": 3,
             "sd_checkpoint": "0123456789", "sd_checkpoint_name": "model"},
            {"string_to_token": {"<x>": torch.tensor(265)}, "string_to_param": {"<x>": t}, "name": "<x>", "step": 3},
            {"string_to_token": {"<a>": torch.tensor(1), "<b>": torch.tensor(2)}, "string_to_param": {"<a>": t,
                                                                                                     "<b>": t}},
            {"<cat>": t[0]}, {"clip_l": torch.randn(1, 8), "clip_g": t[:1]}, {"emb_params": t}]


@st.composite
def mutated_layout(draw, layouts: list, values: st.SearchStrategy) -> object:
    """A valid layout with one value (at the top or one level down) replaced by `values` or deleted."""
    import copy

    data = copy.deepcopy(draw(st.sampled_from(layouts)))
    holder = data
    key = draw(st.sampled_from(sorted(holder)))
    if isinstance(holder[key], dict) and holder[key] and draw(st.booleans()):
        holder, key = holder[key], draw(st.sampled_from(sorted(holder[key])))
    if draw(st.integers(0, 5)) == 0:
        del holder[key]
    else:
        holder[key] = draw(values)
    return data


def built_pickles() -> st.SearchStrategy[bytes]:
    layout = st.dictionaries(st.sampled_from(KEYS), _values(), min_size=1, max_size=5)
    edited = st.deferred(lambda: mutated_layout(_layouts(), _values()))
    return st.tuples(st.one_of(layout, _values(), edited), st.booleans()).map(lambda t: _torch_saved(*t))


def _safetensors_saved(tensors: dict, metadata: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def built_safetensors() -> st.SearchStrategy[bytes]:
    meta_keys = st.sampled_from(["textinv.placeholders", "textinv.init_words", "textinv.step", "textinv.name",
                                 "textinv.base_model", "textinv.extra", "modelspec.title", "format"])
    meta_values = st.one_of(st.text(max_size=20), st.sampled_from(['["<a>", "<b>"]', '{"<a>": 1}', "NaN", "1e400",
                                                                    "[", "{}", "-3", '{"<a>": "cat"}']))
    names = st.sampled_from(KEYS) | st.text(min_size=1, max_size=6)
    return st.tuples(st.dictionaries(names, _tensors(), min_size=1, max_size=3),
                     st.dictionaries(meta_keys, meta_values, max_size=4)).map(lambda t: _safetensors_saved(*t))


def built_png_embeddings() -> st.SearchStrategy[bytes]:
    def tensorish(v):
        return {"TORCHTENSOR": v}

    lists = st.recursive(st.one_of(st.floats(), st.integers(-2**70, 2**70), st.text(max_size=3), st.none()),
                         lambda inner: st.lists(inner, max_size=4), max_leaves=12)
    value = st.one_of(lists.map(tensorish), _values(tensors=False))
    payload = st.dictionaries(st.sampled_from(KEYS), st.one_of(value, st.dictionaries(
        st.sampled_from(KEYS), value, max_size=3)), min_size=1, max_size=4)
    vectors = {"TORCHTENSOR": [[0.5] * 16, [0.25] * 16]}
    layouts = [{"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "x", "step": 3,
                "sd_checkpoint": None, "sd_checkpoint_name": None}]
    return st.one_of(payload, mutated_layout(layouts, value)).map(lambda d: png_with_text({
        "sd-ti-embedding": base64.b64encode(json.dumps(d, allow_nan=True).encode()).decode()}))


def _torch_strategy(data: bytes) -> st.SearchStrategy[bytes]:
    if data[:4] == b"PK\x03\x04":
        return st.one_of(mutated(data), mutated_zip_member(data))
    return mutated(data)


def _safetensors_strategy(data: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(data), mutated_safetensors_header(data))


def _png_strategy(data: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(data), mutated_png_chunk(data, "sd-ti-embedding", b64=True))


def read_embedding_file(path: Path):
    from textinv.formats.edit import describe_embedding
    from textinv.formats.files import load_embedding

    return describe_embedding(load_embedding(path))  # what inspect shows: every vector is touched


# sd-concepts folders: the input is a small archive of the folder's three files, mutated as a whole or one by one.
CONCEPT_FILES = ("learned_embeds.bin", "token_identifier.txt", "type_of_concept.txt")


def _pack(files: dict[str, bytes]) -> bytes:
    return json.dumps({k: base64.b64encode(v).decode() for k, v in files.items()}).encode()


def _unpack(data: bytes) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in json.loads(data).items()}


@cache
def concept_seeds() -> list[bytes]:
    seeds = [_pack({"learned_embeds.bin": _written("diffusers-bin", ".bin"), "token_identifier.txt": b"<cat-toy>",
                    "type_of_concept.txt": b"object\n"}),
             _pack({"learned_embeds.safetensors": _written("diffusers-safetensors", ".safetensors"),
                    "token_identifier.txt": b"<x>"})]
    real = REAL / "sd-concepts-dir_na-tarapisu153"
    if real.is_dir():
        seeds.append(_pack({p.name: p.read_bytes() for p in sorted(real.iterdir()) if p.is_file()}))
    return seeds


@st.composite
def mutated_concept(draw, data: bytes) -> bytes:
    files = _unpack(data)
    name = draw(st.sampled_from(sorted(files)))
    if draw(st.integers(0, 9)) == 0:
        del files[name]
    elif name.endswith(".txt"):
        files[name] = draw(st.one_of(mutated(files[name]), st.binary(max_size=2000)))
    else:
        files[name] = draw(_torch_strategy(files[name]) if name.endswith(".bin") else
                           _safetensors_strategy(files[name]))
    return _pack(files)


def read_concept_folder(path: Path):
    folder = path.with_suffix("")
    folder.mkdir()
    for name, body in _unpack(path.read_bytes()).items():
        (folder / name).write_bytes(body)
    return read_embedding_file(folder)


# YAML configs: textinv's own layout (with a base: beside it) and the paper code's OmegaConf layout.
@cache
def yaml_seeds() -> list[bytes]:
    from textinv.config import PACKAGED_CONFIGS

    own = [(PACKAGED_CONFIGS / f"{n}.yaml").read_bytes() for n in ("v1-finetune", "v2-finetune", "toy")]
    paper = b"""model:
  base_learning_rate: 5.0e-03
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: eps
    personalization_config:
      target: ldm.modules.embedding_manager.EmbeddingManager
      params:
        placeholder_strings: ["*"]
        initializer_words: ["sculpture"]
        num_vectors_per_token: 1
data:
  target: main.DataModuleFromConfig
  params:
    batch_size: 2
    train:
      target: ldm.data.personalized.PersonalizedBase
      params:
        size: 512
        repeats: 100
        flip_p: 0.5
lightning:
  trainer:
    max_steps: 6100
"""
    return [*own, paper, b"base: v1-finetune\ntrain:\n  max_steps: 10\nlog:\n  prompts: ['* on a beach']\n"]


@st.composite
def mutated_yaml(draw, data: bytes) -> bytes:
    """YAML edited as a user or a bad download would: bytes mutated, a line's value replaced, lines shuffled."""
    lines = data.decode().splitlines()
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(mutated(data))
    if kind == 1 and lines:
        i = draw(st.integers(0, len(lines) - 1))
        key = lines[i].split(":", 1)[0] if ":" in lines[i] else lines[i]
        value = draw(st.one_of(
            st.sampled_from([".nan", ".inf", "-.inf", "1e400", "-1", "0", "~", "[]", "{}", "[1, 2]", "'x'", "yes",
                             "no", "*", "&a 1", "*a", "!!python/object:os.system ['x']", "1e-400", "0x10",
                             str(2**64), "<<: {a: 1}", "base: x.yaml", "|\n  text"]),
            st.integers(-2**70, 2**70).map(str), st.text(max_size=12)))
        lines[i] = f"{key}: {value}"
    elif kind == 2 and lines:
        i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
    else:
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(
            ["base: /etc/passwd", "base: missing.yaml", "base: v2-finetune", "model: [1]", "train: 3",
             "unknown:\n  key: 1", "log:\n  val_samples: 100000", "data:\n  paths: /nonexistent",
             "\t- tab", "---\n- a"])))
    return "\n".join(lines).encode("utf-8", "surrogateescape")


def read_yaml_config(path: Path):
    from textinv.config import load_config, validate

    return validate(load_config(path))


# state/: a run folder whose latest state (or state.json) is mutated; the one before it stays intact.
POINTER_TEXT = b'{"step": 4, "state": "state/state-000004.pt"}\n'


@cache
def state_seeds() -> list[bytes]:
    """A run's latest state file, its state.json and whether an intact state comes before it, packed as one input."""
    import torch

    from textinv.atomic import torch_save

    with tempfile.TemporaryDirectory() as tmp:
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1, 16))])
        state = {"step": 4, "learned": torch.zeros(1, 16), "optimizer": optimizer.state_dict(), "scheduler": {},
                 "rng": [torch.zeros(8, dtype=torch.uint8)], "sampler": [{"order": [0, 1], "pos": 1}],
                 "drawn": [[]], "scaler": {}}
        torch_save(state, Path(tmp) / "s.pt")
        raw = (Path(tmp) / "s.pt").read_bytes()
    return [_pack({"state": raw, "pointer": POINTER_TEXT, "previous": b"1"}),
            _pack({"state": raw, "pointer": b"", "previous": b""})]


@st.composite
def mutated_state(draw, data: bytes) -> bytes:
    files = _unpack(data)
    what = draw(st.sampled_from(["state", "pointer", "both"]))
    if what in ("state", "both"):
        files["state"] = draw(_torch_strategy(files["state"]))
    if what in ("pointer", "both"):
        files["pointer"] = draw(st.one_of(st.just(b""), mutated(POINTER_TEXT), st.sampled_from(
            [b'{"step": 4, "state": "../../etc/passwd"}', b'{"state": 4}', b"[]", b'{"state": "state/"}'])))
    files["previous"] = b"1" if draw(st.booleans()) else b""
    return _pack(files)


def read_state(path: Path):
    import torch

    from textinv.atomic import torch_save
    from textinv.runs.states import FOLDER, POINTER, latest_state

    files = _unpack(path.read_bytes())
    run = path.with_suffix("")
    (run / FOLDER).mkdir(parents=True)
    if files["previous"]:  # an intact state before the mutated one, to fall back to
        torch_save({"step": 2, "learned": torch.zeros(1, 16), "optimizer": {}, "scheduler": {}, "rng": [],
                    "sampler": []}, run / FOLDER / "state-000002.pt")
    (run / FOLDER / "state-000004.pt").write_bytes(files["state"])
    if files["pointer"]:
        (run / POINTER).write_bytes(files["pointer"])
    said: list[str] = []
    state = latest_state(run, said.append)
    if any("\n" in line for line in said):
        raise AssertionError(f"a warning of several lines: {said}")
    return state["step"]


# PNG parameters (generation/metadata.py read_parameters), as AUTOMATIC1111 and textinv write them.
@cache
def parameters_seeds() -> list[bytes]:
    text = ('a photo of <cat>, "quoted", (weighted:1.2)\nNegative prompt: blurry\nSteps: 20, Sampler: DDIM, '
            'CFG scale: 7.5, Seed: 42, Size: 512x512, Model: toy, TI hashes: "<cat>: 4f1c0d2e9a7b", '
            "Version: textinv 0.1.0")
    return [png_with_text({"parameters": text}), png_with_text({"parameters": "x\nSteps: 1"})]


def _parameters_strategy(data: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(data), mutated_png_chunk(data, "parameters", b64=False))


def read_png_parameters(path: Path):
    from textinv.generation.metadata import read_parameters

    return read_parameters(path)


TARGETS = {t.name: t for t in [
    Target("pt", pt_seeds, _torch_strategy, read_embedding_file, ".pt", built_pickles),
    Target("bin", bin_seeds, _torch_strategy, read_embedding_file, ".bin", built_pickles),
    Target("safetensors", safetensors_seeds, _safetensors_strategy, read_embedding_file, ".safetensors",
           built_safetensors),
    Target("png-embedding", png_seeds, _png_strategy, read_embedding_file, ".png", built_png_embeddings),
    Target("sd-concepts-folder", concept_seeds, mutated_concept, read_concept_folder, ".concept"),
    Target("yaml-config", yaml_seeds, mutated_yaml, read_yaml_config, ".yaml"),
    Target("state", state_seeds, mutated_state, read_state, ".state"),
    Target("png-parameters", parameters_seeds, _parameters_strategy, read_png_parameters, ".png"),
]}


# --- running many inputs in a fresh process: its peak memory is theirs ---------------------------------------------

WORKER = """
import collections, hashlib, json, os, resource, sys
sys.path.insert(0, {root!r})
from hypothesis import HealthCheck, given, seed, settings
from tests.fuzz_targets import TARGETS, outcome

names, examples, keep, rng_seed = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
# A cap on address space: an input that would take the machine's memory fails here instead of waking the kernel's
# OOM killer on a shared machine (one did, before the unpickler's memo was fixed); what it touched still shows in
# the peak below.
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[5]) << 20, resource.RLIM_INFINITY))
os.makedirs(keep, exist_ok=True)
for name in names:  # imports and first-use allocations before the baseline: what grows after is the inputs'
    for data in TARGETS[name].seeds():
        outcome(TARGETS[name], data)
for name in names:
    target = TARGETS[name]
    counts, dirty, peak = collections.Counter(), [], [0, b""]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    @seed(rng_seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=["generate"],
              suppress_health_check=list(HealthCheck))
    @given(target.inputs())
    def run(data):
        with open(os.path.join(keep, f"{{name}}-current{{target.suffix}}"), "wb") as f:  # what a crash was reading
            f.write(data)
        got = outcome(target, data)
        counts[got.kind] += 1
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        if grew > peak[0]:
            peak[0], peak[1] = grew, data
        if got.kind == "dirty":
            dirty.append((got.detail, data))

    run()
    kept = []
    for detail, data in dirty:
        path = os.path.join(keep, f"{{name}}-{{hashlib.sha256(data).hexdigest()[:12]}}{{target.suffix}}")
        open(path, "wb").write(data)
        kept.append([detail, path])
    peak_file = os.path.join(keep, f"{{name}}-peak{{target.suffix}}")
    open(peak_file, "wb").write(peak[1])
    print(json.dumps({{"target": name, "counts": counts, "dirty": kept, "rss_growth_kib": peak[0],
                      "seeds": len(target.seeds()), "peak_input": peak_file}}), flush=True)
"""


def run_worker(names: list[str], examples: int, keep: Path, seed: int = 0, max_vm_mib: int = 8192) -> list[dict]:
    """Fuzz `names` in one fresh interpreter (its address space capped at `max_vm_mib`); one report per target
    (see WORKER). Raises if the worker dies."""
    worker = WORKER.format(root=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", worker, ",".join(names), str(examples), str(keep), str(seed),
                           str(max_vm_mib)], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"the fuzz worker failed (exit {proc.returncode}; its last input is "
                           f"{keep}/<target>-current.<ext>):\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


# --- running one input -------------------------------------------------------------------------------------------


class Hang(BaseException):
    """The watchdog fired: the reader ran for HANG_SECONDS (a BaseException, so no reader swallows it)."""


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Raise Hang in the main thread after `seconds` (wall clock); a no-op off the main thread."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise Hang(f"still reading after {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Outcome:
    kind: str  # result | clean | dirty
    detail: str  # the error line, or what was wrong


def outcome(target: Target, data: bytes, *, seconds: float = HANG_SECONDS) -> Outcome:
    """Read `data` with `target`'s reader in a fresh folder and sort what happened (see the module doc)."""
    import warnings

    with tempfile.TemporaryDirectory(prefix="textinv-fuzz-") as tmp:
        path = Path(tmp) / f"input{target.suffix}"
        path.write_bytes(data)
        try:
            with watchdog(seconds), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MetadataWarning is a clean way to say a field was ignored
                target.read(path)
        except TextinvError as e:
            text = str(e)
            if "\n" in text or not text.strip():
                return Outcome("dirty", f"a message of {text.count(chr(10)) + 1} lines: {text[:300]!r}")
            return Outcome("clean", text)
        except Hang as e:
            return Outcome("dirty", f"hang: {e}")
        except (Exception, RecursionError, MemoryError) as e:  # noqa: B014 (named for the reader)
            return Outcome("dirty", f"{type(e).__name__}: {str(e)[:300]}")
    return Outcome("result", "")
