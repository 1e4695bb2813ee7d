"""The format registry (textinv/formats/): each tool's acceptance rule as a documented fact, hostile containers,
malformed metadata, and the README's table against the records."""

from __future__ import annotations

import json
import pickletools
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from textinv.errors import EmbeddingFormatError, MetadataWarning
from textinv.formats import FOR_TOOL, TOOLS, WRITE_NAMES
from textinv.formats.common import ENCODER_KEYS, encoder_parts
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import load_embedding, save_embedding
from textinv.formats.registry import FORMATS, WRITABLE

ROOT = Path(__file__).resolve().parents[1]


def _emb(name="<cat>", n=2, dim=768) -> Embedding:
    g = torch.Generator().manual_seed(n)
    return Embedding([Token(name, torch.randn(n, dim, generator=g))], name="cat", step=500)


def _default_outputs(tmp_path) -> list[Path]:
    """What `train` writes by default (`log.formats: [pt]`) and every `--for` layout, for 1 and 3 vectors."""
    out = []
    for n in (1, 3):
        out.append(save_embedding(_emb(n=n), tmp_path / f"train-{n}.pt"))
        for tool in TOOLS:
            if FORMATS[FOR_TOOL[tool]].extension:
                fmt = FORMATS[FOR_TOOL[tool]]
                out.append(save_embedding(_emb(n=n), tmp_path / f"{tool}-{n}{fmt.extension}", for_tool=tool))
    return out


# --- AUTOMATIC1111 -----------------------------------------------------------------------------------------
# stable-diffusion-webui modules/safe.py (read at commits 2d2edc110fb46fcf519804f57024f9c300188f9b and
# 05933840f0676dd1a90a7e2ad3f2a0672624b2cd): `check_zip_filenames` refuses a zip holding any name but
# `<dir>/data.pkl`, `<dir>/version`, `<dir>/data/<n>` ("bad file inside ..."), then unpickles data.pkl with
# `RestrictedUnpickler.find_class`, which allows only these globals.
A1111_ZIP_NAMES = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")
A1111_GLOBALS = {
    ("collections", "OrderedDict"),
    *(("torch._utils", n) for n in ("_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_device_tensor_from_numpy")),
    *(("torch", n) for n in ("FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage",
                             "ByteStorage", "float32", "BFloat16Storage")),
    ("torch.nn.modules.container", "ParameterDict"),
    ("numpy.core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "dtype"), ("numpy", "ndarray"), ("_codecs", "encode"), ("__builtin__", "set"),
}


def _pickle_globals(data: bytes) -> set[tuple[str, str]]:
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "GLOBAL":
            found.add(tuple(arg.split(" ", 1)))
        elif op.name == "STACK_GLOBAL":
            found.add((strings[-2], strings[-1]))
    return found



_MEASURE = """
import resource, sys
from textinv.formats.files import load_embedding
from textinv.errors import EmbeddingFormatError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_embedding(sys.argv[1])
    print("accepted")
except EmbeddingFormatError as e:
    print(str(e).replace(chr(10), " "))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def _refusal_and_memory(path: Path) -> tuple[str, int]:
    """The error reading `path` gives and how far the peak resident memory of a fresh process grew while reading
    it (torch's and zlib's allocations included, which tracemalloc would not see)."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, check=True)
    message, grew = out.stdout.strip().rsplit("\n", 1)
    return message, int(grew)

def test_every_torch_file_we_write_passes_automatic1111s_file_check(tmp_path):
    torch_files = [p for p in _default_outputs(tmp_path) if p.suffix in (".pt", ".bin")]
    torch_files.append(save_embedding(_emb(), tmp_path / "one.bin"))
    assert len(torch_files) >= 4
    for path in torch_files:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            assert all(A1111_ZIP_NAMES.match(n) for n in names), (path.name, names)
            pkl = [n for n in names if n.endswith("/data.pkl")]
            assert len(pkl) == 1
            assert _pickle_globals(z.read(pkl[0])) <= A1111_GLOBALS, path.name
        # and torch's own safe reader still reads it exactly
        data = torch.load(path, weights_only=True)
        assert data


def test_torch_2_default_files_would_be_refused_by_that_check(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"x": torch.ones(2)}, plain)  # what torch 2.x writes by default
    with zipfile.ZipFile(plain) as z:
        assert not all(A1111_ZIP_NAMES.match(n) for n in z.namelist())


# --- InvokeAI, kohya, ComfyUI: which tensor they read and how they read its shape ----------------------------
# InvokeAI (the invokeai 6.14.2 wheel on PyPI) invokeai/backend/model_manager/configs/textual_inversion.py
# `TI_Config_Base._get_base_or_raise`: with string_to_token the width is string_to_param's first value's
# shape[-1], with emb_params or clip_g their shape[-1], and for any other dict `list(values)[0].shape[0]`, so a
# one-key {token: tensor} file passes only as 1-D [dim] ("unrecognized token dimension N" otherwise). Its loader,
# invokeai/backend/textual_inversion.py `TextualInversionModelRaw.from_checkpoint`, takes the first value of
# string_to_param, emb_params, clip_g/clip_l, or the first value of the dict.
# kohya sd-scripts gen_img.py (commit 43bfeea6002f4e0421ec096c529a13dfd3303c0b): after unwrapping
# string_to_param, `embeds1 = next(iter(data.values()))` (SDXL: data["clip_l"]) and
# `num_vectors_per_token = embeds1.size()[0]`, so a 1-D [dim] tensor is read as `dim` vectors of one number.
# ComfyUI comfy/sd1_clip.py `load_embed` (commit 00728eb20fce05955f89ef1ccf5f6167416e94cf): string_to_param's
# first value; else `embed[embed_key]` ('clip_l' for SD1/SDXL-L) if present; else the dict's first value (a
# safetensors file comes back with its keys sorted); a 1-D tensor is one vector.


def _tensor_for(tool: str, data: dict) -> torch.Tensor:
    if "string_to_param" in data:
        return next(iter(data["string_to_param"].values()))
    if tool == "invokeai" and "emb_params" in data:
        return data["emb_params"]
    if tool == "comfyui" and "clip_l" in data:
        return data["clip_l"]
    return next(iter(data.values()))


def _loads(tool: str, path: Path, dim: int, n: int) -> bool:
    data = load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    t = _tensor_for(tool, data)
    if tool == "invokeai" and "string_to_param" not in data and "emb_params" not in data:
        return t.shape[0] == dim and t.dim() == 1 and n == 1  # width read as shape[0]
    if tool == "kohya":
        return t.dim() == 2 and t.shape == (n, dim)  # vectors read as shape[0]
    return (t.reshape(-1, dim).shape == (n, dim)) if t.numel() == n * dim else False


@pytest.mark.parametrize("n", [1, 3])
def test_the_default_pt_loads_in_every_tool(tmp_path, n):
    path = save_embedding(_emb(n=n), tmp_path / "run.pt")
    for tool in ("a1111", "invokeai", "comfyui", "kohya", "diffusers"):
        assert _loads(tool, path, 768, n), tool


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("tool", ["a1111", "invokeai", "comfyui", "kohya", "diffusers"])
def test_convert_for_a_tool_writes_what_that_tool_reads(tmp_path, tool, n):
    ext = FORMATS[FOR_TOOL[tool]].extension
    path = save_embedding(_emb(n=n), tmp_path / f"x{ext}", for_tool=tool)
    assert _loads(tool, path, 768, n)
    back = load_embedding(path)
    assert torch.equal(back.tokens[0].vectors, _emb(n=n).tokens[0].vectors)


def test_the_records_say_which_tools_load_each_layout(tmp_path):
    """The `loads_in` of each writable record agrees with the shape rules above."""
    for name in WRITABLE:
        fmt = FORMATS[name]
        if not fmt.extension or name in ("a1111-png", "paper-pt"):
            continue
        for n in (1, 3):
            path = save_embedding(_emb(n=n), tmp_path / f"{name}-{n}{fmt.extension}", format=name)
            for tool in fmt.loads_in:
                if tool != "diffusers":
                    assert _loads(tool, path, 768, n), (name, tool, n)


def test_sd_concepts_folder_round_trips(tmp_path):
    emb = _emb(n=1)
    emb.extra["concept_type"] = "object"
    out = save_embedding(emb, tmp_path / "my-cat", for_tool="sd-concepts")
    assert (out / "token_identifier.txt").read_text() == "<cat>"
    back = load_embedding(out)
    assert back.source_format == "sd-concepts-folder" and back.tokens[0].name == "<cat>"
    assert torch.equal(back.tokens[0].vectors, emb.tokens[0].vectors)


# --- names and registry -------------------------------------------------------------------------------------


def test_names_match_the_registry():
    assert list(WRITE_NAMES) == WRITABLE
    assert set(FOR_TOOL) == set(TOOLS) and set(FOR_TOOL.values()) <= set(WRITABLE)
    assert all(FORMATS[name].name == name for name in FORMATS)


def test_readme_format_table_matches_the_registry():
    from textinv.formats.registry import readme_table

    readme = (ROOT / "README.md").read_text()
    for line in readme_table().splitlines():
        assert line in readme, f"README's table of written formats is out of date; paste readme_table(): {line}"


def test_readme_for_table_matches_the_registry():
    from textinv.formats.registry import readme_for_table

    readme = (ROOT / "README.md").read_text()
    for line in readme_for_table().splitlines():
        assert line in readme, f"README's --for table is out of date; paste readme_for_table(): {line}"


def test_importing_embeddings_and_running_convert_import_no_transformers_or_toy(tmp_path):
    src = save_embedding(_emb(), tmp_path / "a.pt")
    code = (
        "import sys\n"
        "import textinv.formats.files\n"
        "from typer.testing import CliRunner\n"
        "from textinv.cli import app\n"
        f"r = CliRunner().invoke(app, ['convert', {str(src)!r}, {str(tmp_path / 'b.safetensors')!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers' or m.startswith('textinv.toy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"


# --- hostile and malformed files (issue 12 items 1, 6, 9) ---------------------------------------------------


def test_zip_bomb_is_refused_unread_with_bounded_memory(tmp_path):
    bomb = tmp_path / "bomb.pt"
    good = tmp_path / "good.pt"
    torch.save({"<cat>": torch.ones(4)}, good)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info))
        with z.open("archive/data/1", "w", force_zip64=True) as f:  # 256 MiB of zeros, about 250 KiB on disk
            chunk = bytes(2**20)
            for _ in range(256):
                f.write(chunk)
    assert bomb.stat().st_size < 2**20
    error, grew = _refusal_and_memory(bomb)
    assert re.search("compressed|declare", error), error
    assert grew < 32 * 2**20, grew


def test_safetensors_header_that_points_past_the_end_is_refused(tmp_path):
    header = json.dumps({"<cat>": {"dtype": "F32", "shape": [2**20, 768], "data_offsets": [0, 4 * 768 * 2**20]}})
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(64))
    with pytest.raises(EmbeddingFormatError, match="lies past its end"):
        load_embedding(bad)
    huge = tmp_path / "huge-header.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(EmbeddingFormatError, match="header declares"):
        load_embedding(huge)


def test_bad_textinv_metadata_is_ignored_with_a_warning(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"<cat>": torch.ones(1, 8)}, str(path), metadata={
        "textinv.placeholders": "[not json", "textinv.init_words": "[1, 2]", "textinv.step": "NaN"})
    with pytest.warns(MetadataWarning) as caught:
        emb = load_embedding(path)
    assert emb.tokens[0].name == "<cat>" and emb.step is None and emb.init_words == {}
    assert len(caught) == 3


@pytest.mark.parametrize("step", [float("nan"), float("inf"), -3.0, 1.5, "12"])
def test_a1111_step_that_is_not_a_count_is_dropped(tmp_path, step):
    path = tmp_path / "x.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.ones(1, 8)}, "name": "x",
                "step": step}, path)
    assert load_embedding(path).step is None


@pytest.mark.parametrize("payload", [
    '{"string_to_param": {"*": {"TORCHTENSOR": [[1.0, 2.0], [3.0]]}}, "name": "x"}',  # ragged
    '{"string_to_param": {"*": {"TORCHTENSOR": [["a", "b"]]}}, "name": "x"}',  # strings
    '{"string_to_param": {"*": {"TORCHTENSOR": "1, 2"}}, "name": "x"}',  # a string
    '{"string_to_param": ' + '{"a": ' * 50 + "1" + "}" * 50 + "}",  # nested dicts
    "[" * 100000 + "]" * 100000,  # nested past the JSON reader's recursion limit
])
def test_malformed_png_embedding_chunk_is_one_line(tmp_path, payload):
    import base64

    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(payload.encode()).decode())
    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    with pytest.raises(EmbeddingFormatError) as e:
        load_embedding(path)
    assert "\n" not in str(e.value)


def test_non_utf8_token_identifier_is_ignored_with_a_warning(tmp_path):
    folder = tmp_path / "concept"
    folder.mkdir()
    torch.save({"<good>": torch.ones(8)}, folder / "learned_embeds.bin")
    (folder / "token_identifier.txt").write_bytes(b"\xff\xfe<bad>")
    with pytest.warns(MetadataWarning, match="not UTF-8"):
        emb = load_embedding(folder)
    assert emb.tokens[0].name == "<good>"


def test_model_weights_and_lora_are_not_embeddings(tmp_path):
    weights = tmp_path / "w.safetensors"
    save_file({"model.layer.weight": torch.ones(64, 64)}, str(weights))
    with pytest.raises(EmbeddingFormatError, match="model weights"):
        load_embedding(weights)
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(1.0),
               "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(4, 8)}, str(lora))
    with pytest.raises(EmbeddingFormatError, match="this is a LoRA, not an embedding"):
        load_embedding(lora)


def test_legacy_pickle_declaring_a_huge_storage_is_refused_without_allocating_it(tmp_path):
    import io

    buf = io.BytesIO()
    torch.save({"<cat>": torch.ones(4)}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    at = len(data) - 16 - 8  # the storage's element count sits just before its 16 bytes of data
    assert struct.unpack("<q", data[at:at + 8])[0] == 4
    bomb = tmp_path / "legacy.pt"
    bomb.write_bytes(data[:at] + struct.pack("<q", 2**34) + data[at + 8:])  # claims 64 GiB
    error, grew = _refusal_and_memory(bomb)
    assert re.search("truncated or corrupt", error), error
    assert grew < 32 * 2**20, grew


@pytest.mark.parametrize("tool", ["a1111", "invokeai", "comfyui", "kohya"])
def test_sdxl_for_a_tool_is_clip_l_and_clip_g(tmp_path, tool):
    # AUTOMATIC1111 (textual_inversion.py load_from_file), InvokeAI (TextualInversionModelRaw), kohya
    # (sdxl_gen_img.py: data["clip_l"], data["clip_g"]) and ComfyUI (load_embed's embed_key) read these two keys.
    g = torch.Generator().manual_seed(0)
    emb = Embedding([Token("<xl>", torch.randn(2, 768, generator=g), torch.randn(2, 1280, generator=g))])
    path = save_embedding(emb, tmp_path / f"xl{FORMATS[FOR_TOOL[tool]].extension}", for_tool=tool)
    data = load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    assert set(data) == {"clip_l", "clip_g"}
    assert torch.equal(data["clip_l"], emb.tokens[0].vectors) and torch.equal(data["clip_g"], emb.tokens[0].vectors_2)


def test_encoder_parts_are_contiguous_copies_under_the_encoder_keys():
    wide = torch.arange(2 * 1280 * 2, dtype=torch.float32).view(1280 * 2, 2)
    tok = Token("<xl>", torch.randn(768, 2).t(), wide.t()[:, ::2])  # two non-contiguous views
    parts = encoder_parts(tok)
    assert list(parts) == list(ENCODER_KEYS) == ["clip_l", "clip_g"]
    assert [p.shape for p in parts.values()] == [(2, 768), (2, 1280)]
    assert all(p.is_contiguous() for p in parts.values())
    assert torch.equal(parts["clip_l"], tok.vectors) and torch.equal(parts["clip_g"], tok.vectors_2)
    parts["clip_g"].zero_()
    assert tok.vectors_2.abs().sum() > 0  # a copy, not a view of the token


@pytest.mark.parametrize("fmt", ["a1111-pt", "kohya", "diffusers-bin", "diffusers-safetensors"])
def test_every_sdxl_writer_stores_the_encoder_parts(tmp_path, fmt):
    g = torch.Generator().manual_seed(1)
    tok = Token("<xl>", torch.randn(3, 768, generator=g), torch.randn(3, 1280, generator=g))
    path = tmp_path / f"xl{FORMATS[fmt].extension}"
    FORMATS[fmt].write(Embedding([tok]), path)
    data = load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    assert sorted(data) == sorted(ENCODER_KEYS)  # safetensors sorts its keys
    assert all(torch.equal(data[k], v) for k, v in encoder_parts(tok).items())
    assert load_embedding(path).tokens[0].vectors_2.shape == (3, 1280)


def test_one_list_of_embedding_file_endings_and_its_tensor_subset():
    from textinv.formats import EMBEDDING_SUFFIXES, SHORTHANDS, TENSOR_SUFFIXES
    from textinv.formats.registry import resolve

    assert EMBEDDING_SUFFIXES == (".pt", ".bin", ".safetensors", ".png")
    assert set(TENSOR_SUFFIXES) == set(EMBEDDING_SUFFIXES) - {".png"} and TENSOR_SUFFIXES[0] == ".safetensors"
    for suffix in EMBEDDING_SUFFIXES:  # writing picks the format from the ending, upper case too
        assert resolve(None, _emb(), Path(f"x{suffix.upper()}")).name == SHORTHANDS[suffix[1:]]
    with pytest.raises(EmbeddingFormatError, match="cannot tell the output format"):
        resolve(None, _emb(), Path("x.ckpt"))
