"""The bad-input campaign of issues 12 and 25, rerunnable: every kind of bad input and fault a hostile new user tried
(hostile and broken files through every command that reads them, config values, flags, resume damage, signals,
`accelerate launch`), each run through the real command line on the shipped toy model and judged:

    clean  an error case ends in exactly one `error:` line (no traceback), with the exit code of an error, and,
           where the arguments already show the problem, before any model loads; a case that should work exits 0;
           a case's own check (nothing half-written, pictures kept, ...) holds
    left   anything else, listed with what went wrong

    .venv/bin/python bench/campaign.py                 # every kind (about 4 minutes on 2 busy cores)
    .venv/bin/python bench/campaign.py --only resume   # the kinds whose group or name holds a word

Most kinds run in-process (typer's CliRunner) for speed; signals and `accelerate launch` run real processes.
Prints one line per kind that is left, then a table per group, and exits 1 if any kind is left. Run as root, the
two kinds of a read-only place are left out (root writes there): 424 kinds instead of 426.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Case:
    group: str
    name: str
    argv: Callable[[Path], list]  # given the case's own working folder (the fixtures are in FIX)
    expect: str = "error"  # error | ok
    before_load: bool = True  # an error the arguments show: no model may load before it
    check: Callable[[Path, object], str | None] | None = None  # extra check: None when fine, else what is wrong
    prepare: Callable[[Path], None] | None = None


FIX = Path()  # the shared fixtures folder, set by main()
TOY = 64  # the toy model's text-encoder width


# --- fixtures ------------------------------------------------------------------------------------------------------


def _torch_bytes(obj, legacy: bool = False, protocol: int = 2) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy, pickle_protocol=protocol)
    return buf.getvalue()


class _Call:
    """A pickle that asks to call `fn(*args)` when loaded."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _legacy_with(data: bytes, old: bytes, new: bytes, nth: int = 0) -> bytes:
    """The legacy torch file `data` with its `nth` BININT1 of the value `old` (after the three header pickles)
    replaced by the pickled int `new`."""
    import pickletools

    f = io.BytesIO(data)
    for _ in range(3):
        pickle.load(f)
    start = f.tell()
    hits = [start + pos for op, arg, pos in pickletools.genops(io.BytesIO(data[start:]))
            if op.name == "BININT1" and arg == old[0]]
    at = hits[nth]
    return data[:at] + new + data[at + 2:]


def make_fixtures(fix: Path) -> None:
    import torch
    from PIL import Image, PngImagePlugin
    from safetensors.torch import save_file

    from textinv.formats.embedding import Embedding, Token
    from textinv.formats.files import save_embedding

    fix.mkdir(parents=True, exist_ok=True)
    from textinv.toy import world

    pics = fix / "pics"
    world.write_concept(pics, *world.HELD_OUT[0], n=3)  # pictures of one toy concept: `eval` on the toy model scores them
    (fix / "empty").mkdir()
    (fix / "subonly" / "inner").mkdir(parents=True)
    (fix / "notimages").mkdir()
    (fix / "notimages" / "a.bin").write_bytes(b"\x00" * 100)
    ro = fix / "ro"
    ro.mkdir()
    ro.chmod(0o555)

    def emb(name="<x>", widths=(TOY,), n=1, init=None):
        second = torch.randn(n, widths[1]) if len(widths) > 1 else None
        return Embedding([Token(name, torch.randn(n, widths[0]), second)], init_words={name: init} if init else {})

    save_embedding(emb(init="cat"), fix / "good.pt")
    save_embedding(emb("<y>", init="dog"), fix / "good2.safetensors")
    save_embedding(emb(init="cat"), fix / "same-name.pt")
    save_embedding(emb(widths=(768,)), fix / "sd15.pt")
    save_embedding(emb(widths=(1024,)), fix / "sd2.pt")
    save_embedding(emb(widths=(768, 1280)), fix / "sdxl.safetensors")
    two = emb()
    two.tokens.append(emb("<b>").tokens[0])
    save_embedding(two, fix / "two.pt")
    good = (fix / "good.pt").read_bytes()

    bad = fix / "bad"
    bad.mkdir()
    (bad / "empty.pt").write_bytes(b"")
    (bad / "truncated.pt").write_bytes(good[: len(good) // 2])
    for suffix in (".pt", ".bin", ".safetensors", ".png"):
        (bad / f"random{suffix}").write_bytes(os.urandom(2000))
    (bad / "text.pt").write_text("these are not the tensors you are looking for\n" * 20)
    legacy = _torch_bytes({"<cat>": torch.ones(4)}, legacy=True)
    (bad / "legacy-count.pt").write_bytes(legacy[: len(legacy) - 24] + struct.pack("<q", 2**34) + legacy[-16:])
    (bad / "legacy-256gib.pt").write_bytes(_legacy_with(legacy, b"\x04", b"\x8a\x05" + (2**36).to_bytes(5, "little")))
    (bad / "legacy-1gib.pt").write_bytes(_legacy_with(legacy, b"\x04", b"\x8a\x05" + (2**28).to_bytes(5, "little")))
    (bad / "shape-256gib.pt").write_bytes(_legacy_with(legacy, b"\x04", b"\x8a\x05" + (2**36).to_bytes(5, "little"),
                                                       nth=1))
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(bad / "zip-bomb.pt", "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info))
        with z.open("archive/data/9", "w", force_zip64=True) as f:
            for _ in range(64):
                f.write(bytes(2**20))
    hostile = {"os-system": _Call(os.system, "touch PWNED"), "eval": _Call(eval, "open('PWNED','w')"),
               "getattr": _Call(getattr, _Call(__import__, "os"), "system"), "import": _Call(__import__, "os"),
               "subprocess": _Call(subprocess.Popen, ["touch", "PWNED"])}
    for name, obj in hostile.items():
        (bad / f"hostile-{name}-zip.pt").write_bytes(_torch_bytes({"<x>": obj}))
        (bad / f"hostile-{name}-legacy.pt").write_bytes(pickle.dumps({"<x>": obj}, protocol=2))
    (bad / "hostile-os-system-proto4.pt").write_bytes(pickle.dumps({"<x>": hostile["os-system"]}, protocol=4))
    (bad / "nan.pt").write_bytes(_torch_bytes({"<x>": torch.full((1, TOY), float("nan"))}))
    (bad / "inf.safetensors").write_bytes(b"")
    save_file({"<x>": torch.full((1, TOY), float("inf"))}, str(bad / "inf.safetensors"))
    (bad / "no-tensors.pt").write_bytes(_torch_bytes({"a": 1, "b": "two"}))
    (bad / "scalar.pt").write_bytes(_torch_bytes({"<x>": torch.tensor(3.0)}))
    (bad / "cube.pt").write_bytes(_torch_bytes({"<x>": torch.ones(2, 2, TOY)}))
    save_file({"lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(1.0),
               "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(4, 8)}, str(bad / "lora.safetensors"))
    save_file({"model.layer.weight": torch.ones(64, 64)}, str(bad / "weights.safetensors"))
    save_file({"t5xxl": torch.ones(1, 4096)}, str(bad / "t5.safetensors"))
    header = json.dumps({"<x>": {"dtype": "F32", "shape": [2**20, 768], "data_offsets": [0, 4 * 768 * 2**20]}})
    (bad / "past-end.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(64))
    (bad / "huge-header.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    (bad / "corrupt-header.safetensors").write_bytes(struct.pack("<Q", 10) + b"{not json}" + bytes(8))

    def png(payload: str | None, name: str):
        info = PngImagePlugin.PngInfo()
        if payload is not None:
            info.add_text("sd-ti-embedding", base64.b64encode(payload.encode()).decode())
        Image.new("RGB", (8, 8)).save(bad / name, pnginfo=info)

    png(None, "no-chunk.png")
    png('{"string_to_param": {"*": {"TORCHTENSOR": [[1.0, 2.0], [3.0]]}}, "name": "x"}', "ragged.png")
    png('{"string_to_param": {"*": {"TORCHTENSOR": [["a", "b"]]}}, "name": "x"}', "strings.png")
    png('{"string_to_param": ' + '{"a": ' * 50 + "1" + "}" * 50 + "}", "nested.png")
    png("[" * 100000 + "]" * 100000, "deep.png")
    png("not base64 json", "garbage-chunk.png")
    (bad / "no-embedding-folder").mkdir()
    (bad / "no-embedding-folder" / "readme.txt").write_text("x")
    concept = bad / "concept-bad-token"
    concept.mkdir()
    torch.save({"<good>": torch.ones(TOY)}, concept / "learned_embeds.bin")
    (concept / "token_identifier.txt").write_bytes(b"\xff\xfe<bad>")
    save_file({"<x>": torch.ones(1, TOY)}, str(bad / "bad-metadata.safetensors"),
              metadata={"textinv.placeholders": "[not json", "textinv.init_words": "[1, 2]", "textinv.step": "NaN"})
    (bad / "step-nan.pt").write_bytes(_torch_bytes({"string_to_token": {"*": 265}, "string_to_param":
                                                    {"*": torch.ones(1, TOY)}, "name": "x", "step": float("nan")}))
    (bad / "big.pt").write_bytes(b"\x80\x02" + bytes(65 * 2**20))
    Image.new("RGB", (8, 8)).save(fix / "init.png")
    huge = fix / "huge"  # a PNG header declaring 20000 x 20000 px over a few bytes of data
    huge.mkdir()
    Image.new("L", (1, 1)).save(huge / "big.png")
    data = bytearray((huge / "big.png").read_bytes())
    data[16:24] = struct.pack(">II", 20000, 20000)
    import zlib

    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    (huge / "big.png").write_bytes(bytes(data))
    (fix / "notes.txt").write_text("hello")
    (fix / "bin.yaml").write_bytes(bytes(range(256)) * 4)


# Bad files, and whether reading them is an error (else: read with a warning).
BAD_FILES = {
    "empty.pt": "error", "truncated.pt": "error", "random.pt": "error", "random.bin": "error",
    "random.safetensors": "error", "random.png": "error", "text.pt": "error", "legacy-count.pt": "error",
    "legacy-256gib.pt": "error", "legacy-1gib.pt": "error", "shape-256gib.pt": "error", "zip-bomb.pt": "error",
    "hostile-os-system-zip.pt": "error", "hostile-os-system-legacy.pt": "error", "hostile-eval-zip.pt": "error",
    "hostile-eval-legacy.pt": "error", "hostile-getattr-zip.pt": "error", "hostile-getattr-legacy.pt": "error",
    "hostile-import-zip.pt": "error", "hostile-import-legacy.pt": "error", "hostile-subprocess-zip.pt": "error",
    "hostile-subprocess-legacy.pt": "error", "hostile-os-system-proto4.pt": "error", "nan.pt": "error",
    "inf.safetensors": "error", "no-tensors.pt": "error", "scalar.pt": "error", "cube.pt": "error",
    "lora.safetensors": "error", "weights.safetensors": "error", "t5.safetensors": "error",
    "past-end.safetensors": "error", "huge-header.safetensors": "error", "corrupt-header.safetensors": "error",
    "no-chunk.png": "error", "ragged.png": "error", "strings.png": "error", "nested.png": "error",
    "deep.png": "error", "garbage-chunk.png": "error", "no-embedding-folder": "error", "big.pt": "error",
    "concept-bad-token": "ok", "bad-metadata.safetensors": "ok", "step-nan.pt": "ok",
}


def _nothing_ran(ws: Path, result) -> str | None:
    return "a hostile pickle ran" if (ws / "PWNED").exists() or (FIX / "PWNED").exists() else None


def _no_file(name: str) -> Callable[[Path, object], str | None]:
    return lambda ws, r: f"{name} was written" if (ws / name).exists() else None


def file_cases() -> list[Case]:
    cases = []
    for name, expect in BAD_FILES.items():
        f = lambda ws, n=name: FIX / "bad" / n  # noqa: E731
        cases += [
            Case("files", f"inspect {name}", lambda ws, f=f: ["inspect", f(ws)], expect, check=_nothing_ran),
            Case("files", f"convert {name}", lambda ws, f=f: ["convert", f(ws), ws / "out.pt"], expect,
                 check=_nothing_ran if expect == "ok" else lambda ws, r: _nothing_ran(ws, r) or _no_file("out.pt")(ws, r)),
            Case("files", f"merge {name}", lambda ws, f=f: ["merge", FIX / "good.pt", f(ws), "-o", ws / "m.pt",
                                                           "--on-conflict", "rename"], expect, check=_nothing_ran),
            Case("files", f"generate -e {name}", lambda ws, f=f: ["generate", "a photo of <x>", "-m", "toy", "-e",
                                                                  f(ws), "-s", "1", "--out", ws / "o"],
                 "error" if expect == "error" else "any", check=_nothing_ran),
            Case("files", f"eval {name}", lambda ws, f=f: ["eval", f(ws), "-m", "toy", "--data", FIX / "pics",
                                                           "-i", "cat", "--seeds", "1", "-s", "1"],
                 "error" if expect == "error" else "any", check=_nothing_ran),
        ]
    return cases


def config_cases() -> list[Case]:
    import dataclasses
    import typing

    from textinv import config as c

    def train(*sets: str, config: str | None = "toy") -> Callable[[Path], list]:
        short = [] if any(s.startswith("train.max_steps") for s in sets) else ["--max-steps", 2]  # if accepted
        return lambda ws: ["train", FIX / "pics", "-i", "cat", "-m", "toy", "--out", ws / "logs", *short,
                           *(["--config", config] if config else []), *[a for s in sets for a in ("--set", s)]]

    cases = [Case("config", v, train(*v.split())) for v in [
        "optim.learnig_rate=1", "optim.learning_rate=fast", "optim.weight_decay=.nan", "optim.adam_epsilon=.inf",
        f"train.seed={2**70}", "optim.learning_rate=1e38", "data.batch_size=10000", "data.resolution=65536",
        "data.repeats=1000000000", "log.prompts=3", "log.prompts=[1, 2]", "log.negative_prompt=[a]",
        "log.val_samples=100000", "personalization.placeholder_strings=[]", "data.resolution=33",
        "data.flip_p=2", "log.formats=[jpg]", "train.mixed_precision=fp8", "model.family=SD3",
        "train.early_stop=3 log.val_loss_every=0", "personalization.num_vectors_per_token=76",
        "log.report_to=nowhere"]]
    for section in dataclasses.fields(c.Config):
        cls = typing.get_type_hints(c.Config)[section.name]
        for f in dataclasses.fields(cls):
            if typing.get_type_hints(cls)[f.name] in (int, float):
                cases.append(Case("bounds", f"{section.name}.{f.name} huge", train(f"{section.name}.{f.name}=1e15")))
                cases.append(Case("bounds", f"{section.name}.{f.name} negative", train(f"{section.name}.{f.name}=-1")))

    def yaml_case(name: str, text: str) -> Case:
        def prepare(ws: Path, text=text):
            (ws / "c.yaml").write_text(text)
            (ws / "loop.yaml").write_text("base: loop.yaml\n")
        return Case("config", f"yaml: {name}", lambda ws: ["train", FIX / "pics", "-i", "cat", "-m", "toy", "--out",
                                                           ws / "logs", "--config", ws / "c.yaml"], prepare=prepare)

    cases += [yaml_case(n, t) for n, t in {
        "base /etc/passwd": "base: /etc/passwd\n", "base missing": "base: nowhere.yaml\n",
        "base loop": "base: loop.yaml\n", "not a mapping": "- a\n- b\n", "unknown section": "trian:\n  seed: 1\n",
        "section not a mapping": "train: 3\n", "duplicate key": "train:\n  seed: 1\n  seed: 2\n",
        "bad yaml": "train: [\n", "python tag": "train: !!python/object:os.system ['x']\n",
        "tab": "train:\n\tseed: 1\n"}.items()]
    cases += [Case("config", "binary --config", lambda ws: ["train", FIX / "pics", "-i", "cat", "-m", "toy",
                                                             "--config", FIX / "bin.yaml"]),
              Case("config", "missing --config", lambda ws: ["train", FIX / "pics", "-i", "cat", "--config",
                                                              ws / "nope.yaml"])]
    return cases


def flag_cases() -> list[Case]:
    def gen(*extra) -> Callable[[Path], list]:
        return lambda ws: ["generate", "a photo of <x>", "-m", "toy", "--out", ws / "o", *extra]

    g = [("-n 0", ["-n", 0]), ("-s 0", ["-s", 0]), ("--cfg nan", ["--cfg", "nan"]), ("--cfg -1", ["--cfg", -1]),
         ("--seed 2**70", ["--seed", 2**70]), ("--seed 2**32", ["--seed", 2**32]), ("--seed -1", ["--seed", -1]),
         ("-W 7", ["-W", 7]), ("-H 0", ["-H", 0]), ("-b 0", ["-b", 0]), ("--scheduler nope", ["-A", "nope"]),
         ("--dtype fp7", ["--dtype", "fp7"]), ("--device tpu", ["--device", "tpu"]),
         ("--device cuda without a GPU", ["--device", "cuda"]),
         ("--strength 1.5", ["--init-img", FIX / "init.png", "--strength", 1.5]),
         ("--init-img missing", ["--init-img", FIX / "nope.png"]), ("--init-img text", ["--init-img", FIX / "notes.txt"]),
         ("--model missing path", ["-m", "./nowhere.ckpt"]), ("--model folder w/o index", ["-m", FIX / "empty"]),
         ("--model not a model file", ["-m", FIX / "notes.txt"]),
         ("--model-config missing with a file", ["-m", FIX / "good2.safetensors", "--model-config", FIX / "nope"]),
         ("--model-config with toy", ["--model-config", FIX / "pics"]),
         ("-e missing", ["-e", FIX / "nope.pt"]), ("-e empty folder", ["-e", FIX / "empty"]),
         ("-e SD1.5 on toy", ["-e", FIX / "sd15.pt"]), ("-e SD2 on toy", ["-e", FIX / "sd2.pt"]),
         ("-e SDXL on toy", ["-e", FIX / "sdxl.safetensors"]),
         ("--token count", ["-e", FIX / "good.pt", "--token", "<a>", "--token", "<b>"]),
         ("--token on two tokens", ["-e", FIX / "two.pt", "--token", "<a>"]),
         ("same placeholder twice", ["-e", FIX / "good.pt", "-e", FIX / "same-name.pt"]),
         ("--out a file", ["--out", FIX / "notes.txt"]), ("--out under a file", ["--out", FIX / "notes.txt" / "o"])]
    cases = [Case("generate", name, gen(*extra)) for name, extra in g]
    cases.append(Case("generate", "no prompt, no terminal", lambda ws: ["generate", "-m", "toy"]))
    cases.append(Case("generate", "works", lambda ws: ["generate", "a photo of <x>", "-m", "toy", "-e", FIX / "good.pt",
                                                       "-n", 2, "-s", 2, "--seed", 4294967295, "--out", ws / "o"], "ok",
                      check=lambda ws, r: None if len(list((ws / "o").glob("*.png"))) == 3 else "no 2 pictures + grid"))
    cases.append(Case("generate", "img2img works", lambda ws: ["img2img", "x", "-m", "toy", "--init-img",
                                                               FIX / "init.png", "-s", 2, "--out", ws / "o"], "ok"))

    def train(*extra, dirs=None) -> Callable[[Path], list]:
        return lambda ws: ["train", *(dirs or [FIX / "pics"]), "-i", "cat", "-m", "toy", "--out", ws / "logs", *extra]

    t = [("DIR missing", train(dirs=[FIX / "nope"])), ("DIR a file", train(dirs=[FIX / "notes.txt"])),
         ("DIR empty", train(dirs=[FIX / "empty"])), ("DIR only subfolders", train(dirs=[FIX / "subonly"])),
         ("DIR no images", train(dirs=[FIX / "notimages"])), ("no DIR", lambda ws: ["train", "-i", "cat", "-m", "toy"]),
         ("placeholder empty", train("-p", "")), ("placeholder with a space", train("-p", "a b")),
         ("two placeholders one word", train("-p", "<a>", "-p", "<b>")),
         ("--out a file", lambda ws: ["train", FIX / "pics", "-i", "cat", "-m", "toy", "--out", FIX / "notes.txt"]),
         ("--out read-only", lambda ws: ["train", FIX / "pics", "-i", "cat", "-m", "toy", "--out", FIX / "ro" / "l"]),
         ("--model-config with toy", train("--model-config", FIX / "nope")),
         ("sdxl config on toy", train("--config", "sdxl-finetune")), ("--name with a slash", train("--name", "a/b")),
         ("--report-to nowhere", train("--report-to", "nowhere")), ("--device cuda", train("--device", "cuda")),
         ("--max-steps 0", train("--max-steps", 0)), ("--model missing", train("-m", "./nowhere.ckpt"))]
    cases += [Case("train", n, a) for n, a in t]
    if os.geteuid() == 0:  # root writes into read-only folders: that kind cannot be tried here
        cases = [c for c in cases if c.name != "--out read-only"]

    def ev(*extra, target=None) -> Callable[[Path], list]:
        return lambda ws: ["eval", target or FIX / "good.pt", "-m", "toy", "--seeds", 1, "-s", 1, *extra]

    e = [("--data missing", ev("--data", FIX / "nope")), ("--data empty", ev("--data", FIX / "empty")),
         ("--data a file", ev("--data", FIX / "notes.txt")), ("--cfg nan", ev("--data", FIX / "pics", "--cfg", "nan")),
         ("--seed 2**40", ev("--data", FIX / "pics", "--seed", 2**40)),
         ("--copy-best exists", ev("--data", FIX / "pics", "--copy-best", FIX / "good.pt")),
         ("--copy-best bad extension", ev("--data", FIX / "pics", "--copy-best", FIX / "best.txt")),
         ("--copy-best under a file", ev("--data", FIX / "pics", "--copy-best", FIX / "notes.txt" / "b.pt")),
         ("SD1.5 embedding on toy", ev("--data", FIX / "nope", target=FIX / "sd15.pt")),
         ("SDXL embedding on toy", ev("--data", FIX / "nope", target=FIX / "sdxl.safetensors")),
         ("no init word", ev("--data", FIX / "pics", target=FIX / "sd15.pt")),
         ("missing target", ev("--data", FIX / "pics", target=FIX / "nope.pt")),
         ("--model missing", lambda ws: ["eval", FIX / "good.pt", "-m", "./nowhere.ckpt", "--data", FIX / "pics"]),
         ("--margin 2", ev("--data", FIX / "pics", "--margin", 2))]
    cases += [Case("eval", n, a) for n, a in e]
    cases.append(Case("eval", "works", ev("--data", FIX / "pics", "-C", 5, "-i", "cat"), "ok"))
    cases += [
        Case("inspect", "--model toy, SD1.5 file", lambda ws: ["inspect", FIX / "sd15.pt", "-m", "toy"]),
        Case("inspect", "--model missing", lambda ws: ["inspect", FIX / "good.pt", "-m", "./nowhere"]),
        Case("inspect", "--model toy works", lambda ws: ["inspect", FIX / "good.pt", "-m", "toy"], "ok"),
        Case("inspect", "missing file", lambda ws: ["inspect", FIX / "nope.pt"]),
        Case("inspect", "--debug after the command shows the traceback", lambda ws: ["inspect", FIX / "nope.pt",
                                                                                     "--debug"], "traceback"),
        Case("convert", "--token onto a name it holds", lambda ws: ["convert", FIX / "two.pt", ws / "o.pt", "--token",
                                                                     "<x>=<b>"], check=_no_file("o.pt")),
        Case("convert", "--token to an empty name", lambda ws: ["convert", FIX / "good.pt", ws / "o.pt", "--token",
                                                                 "<x>="]),
        Case("convert", "--to and --for", lambda ws: ["convert", FIX / "good.pt", ws / "o.pt", "--to", "pt", "--for",
                                                       "a1111"]),
        Case("convert", "unknown extension", lambda ws: ["convert", FIX / "good.pt", ws / "o.txt"]),
        Case("convert", "exists without --force", lambda ws: ["convert", FIX / "good.pt", FIX / "good2.safetensors"]),
        Case("convert", "two tokens to safetensors", lambda ws: ["convert", FIX / "two.pt", ws / "o.safetensors"]),
        Case("convert", "-q after the command", lambda ws: ["convert", FIX / "good.pt", ws / "o.bin", "-q"], "ok",
             check=lambda ws, r: None if r.stderr == "" else f"printed {r.stderr!r}"),
        Case("convert", "out under a file", lambda ws: ["convert", FIX / "good.pt", FIX / "notes.txt" / "o.pt"]),
        Case("merge", "out under a file", lambda ws: ["merge", FIX / "good.pt", FIX / "good2.safetensors", "-o",
                                                      FIX / "notes.txt" / "m.pt"]),
        Case("generate", "--init-img of 20000x20000 px", lambda ws: ["img2img", "x", "-m", "toy", "--init-img",
                                                                      FIX / "huge" / "big.png", "--out", ws / "o"]),
        Case("train", "a picture of 20000x20000 px", lambda ws: ["train", FIX / "huge", "-i", "cat", "-m", "toy",
                                                                 "--out", ws / "logs"]),
        Case("generate", "-e a concept name not fetched", lambda ws: ["generate", "x", "-m", "toy", "-e", "cat-toy"]),
        Case("fetch", "--search offline", lambda ws: ["fetch", "--search", "cat"]),
        Case("report", "a damaged eval.json", lambda ws: ["report", ws / "run"], prepare=lambda ws: (
            shutil.copytree(_trained_run(FIX), ws / "run"), (ws / "run" / "eval.json").write_text("{"))),
        Case("demo", "--out under a file", lambda ws: ["demo", "-o", FIX / "notes.txt" / "d"]),
        Case("convert", "out in a read-only place", lambda ws: ["convert", FIX / "good.pt", FIX / "ro" / "o.pt"]),
        Case("merge", "conflict", lambda ws: ["merge", FIX / "good.pt", FIX / "same-name.pt", "-o", ws / "m.pt"]),
        Case("merge", "families differ", lambda ws: ["merge", FIX / "good.pt", FIX / "sd15.pt", "-o", ws / "m.pt"]),
        Case("merge", "ask without a terminal", lambda ws: ["merge", FIX / "good.pt", FIX / "same-name.pt", "-o",
                                                            ws / "m.pt", "--on-conflict", "ask"]),
        Case("fetch", "../x", lambda ws: ["fetch", "../x", "-o", ws / "e"]),
        Case("fetch", "/abs", lambda ws: ["fetch", "/abs", "-o", ws / "e"]),
        Case("fetch", "a/b/c", lambda ws: ["fetch", "a/b/c", "-o", ws / "e"]),
        Case("fetch", "offline, not cached", lambda ws: ["fetch", "cat-toy", "-o", ws / "e"]),
        Case("report", "not a run", lambda ws: ["report", FIX / "pics"]),
    ]
    if os.geteuid() == 0:
        cases = [c for c in cases if c.name != "out in a read-only place"]
    return cases


# --- resume: a real two-step run on the toy model, damaged a different way for each kind --------------------------


RUN: Path | None = None


def _trained_run(root: Path) -> Path:
    global RUN
    if RUN is None:
        from typer.testing import CliRunner

        from textinv.cli import app

        res = CliRunner().invoke(app, ["train", str(FIX / "pics"), "-i", "cat", "-m", "toy", "--max-steps", "4",
                                       "--set", "log.save_every=2", "--name", "r", "--out", str(root / "logs")])
        assert res.exit_code == 0, res.output
        RUN = next((root / "logs").iterdir())
    return RUN


def resume_cases() -> list[Case]:
    def damaged(how: Callable[[Path], None]) -> Callable[[Path], None]:
        def prepare(ws: Path):
            run = ws / "run"
            shutil.copytree(_trained_run(FIX), run)
            how(run)
        return prepare

    def config_edit(old: str, new: str) -> Callable[[Path], None]:
        def how(run: Path):
            text = (run / "config.yaml").read_text()
            if old not in text:  # the toy config changed under the campaign: the kind would try nothing
                raise RuntimeError(f"config.yaml has no {old!r} to edit")
            (run / "config.yaml").write_text(text.replace(old, new))
        return how

    def latest(run: Path) -> Path:
        return sorted((run / "state").glob("state-*.pt"))[-1]

    def write_latest(data: Callable[[Path], bytes]) -> Callable[[Path], None]:
        return lambda run: latest(run).write_bytes(data(latest(run)))

    def finals_gone(run: Path):
        (run / "embeddings" / "r.pt").unlink()

    resume = lambda ws: ["train", "--resume", ws / "run", "--max-steps", "6"]  # noqa: E731
    kinds = {
        "latest state truncated": ("ok", write_latest(lambda p: p.read_bytes()[:300])),
        "latest state empty": ("ok", write_latest(lambda p: b"")),
        "latest state random bytes": ("ok", write_latest(lambda p: os.urandom(3000))),
        "latest state missing entries": ("ok", write_latest(lambda p: _torch_bytes({"step": 4}))),
        "latest state hostile": ("error", write_latest(lambda p: pickle.dumps(_Call(os.system, "touch PWNED")))),
        "state.json damaged": ("ok", lambda run: (run / "state.json").write_text('{"ste')),
        "state.json outside the run": ("ok", lambda run: (run / "state.json").write_text(
            '{"step": 9, "state": "../../../etc/passwd"}')),
        "state.json missing": ("ok", lambda run: (run / "state.json").unlink()),
        "every state damaged": ("error", lambda run: [p.write_bytes(b"") for p in (run / "state").iterdir()]),
        "num_vectors_per_token edited": ("error", config_edit("num_vectors_per_token: 4", "num_vectors_per_token: 3")),
        "placeholders edited": ("error", config_edit("placeholder_strings:\n  - '*'",
                                                     "placeholder_strings:\n  - '*'\n  - '<b>'")),
        "config.yaml damaged": ("error", lambda run: (run / "config.yaml").write_text("model: [\n")),
        "images folder moved": ("error", config_edit(str(FIX / "pics"), str(FIX / "moved"))),
        "a bad loss.csv row": ("ok", lambda run: (run / "loss.csv").write_text(
            (run / "loss.csv").read_text() + "3,nan,x\n")),
        "killed before the final files": ("ok", finals_gone),
    }
    cases = [Case("resume", name, resume, expect, prepare=damaged(how), check=_nothing_ran)
             for name, (expect, how) in kinds.items()]
    cases += [
        Case("resume", "not a run folder", lambda ws: ["train", "--resume", FIX / "pics"]),
        Case("resume", "with another flag", lambda ws: ["train", "--resume", ws / "run", "-i", "dog"],
             prepare=damaged(lambda run: None)),
        Case("resume", "already finished", lambda ws: ["train", "--resume", ws / "run"], prepare=damaged(lambda run: None),
             before_load=False),
    ]
    return cases


# --- real processes: signals and accelerate launch ------------------------------------------------------------------


@dataclass
class Proc:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None


def _as_in_a_terminal() -> None:
    """A background job's children inherit SIGINT (and under nohup SIGHUP) ignored; a terminal's do not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _signal_generate(sig: int) -> Callable[[Path], Proc]:
    def run(ws: Path) -> Proc:
        cmd = [sys.executable, "-m", "textinv", "generate", "a photo", "-m", "toy", "-n", "30", "-b", "1", "-s", "8",
               "--seed", "1", "--out", str(ws / "o")]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ws,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=_as_in_a_terminal)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list((ws / "o").glob("0*.png"))) < 2 and p.poll() is None:
            time.sleep(0.2)
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
        return Proc(p.returncode, out, err)
    return run


def _accelerate_without_multi_gpu(ws: Path) -> Proc:
    # --quiet: without it the launcher adds a traceback of its own (CalledProcessError) after textinv's line
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--quiet", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "textinv", "train",
           str(FIX / "pics"), "-i", "cat", "-m", "toy", "--out", str(ws / "logs")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    err = "\n".join(line for line in p.stderr.splitlines() if line.startswith(("error:", "Traceback")))
    return Proc(p.returncode, p.stdout, err)


def _kept_pictures(ws: Path, result) -> str | None:
    pics = sorted((ws / "o").glob("0*.png"))
    if not pics:
        return "no picture kept"
    if result.exit_code != 130:
        return f"exit {result.exit_code}, not 130"
    if "interrupted" not in result.stderr:
        return f"no message: {result.stderr[-200:]!r}"
    return None


def process_cases() -> list[Case]:
    cases = [Case("signals", f"generate {name}", lambda ws: [], "any", before_load=False, check=_kept_pictures,
                  prepare=None) for name in ("SIGINT", "SIGTERM", "SIGHUP")]
    for case, sig in zip(cases, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP), strict=True):
        case.argv = _signal_generate(sig)  # a process, not CliRunner arguments
    cases.append(Case("accelerate", "launch --num_processes 2 without --multi_gpu", _accelerate_without_multi_gpu,
                      "error", before_load=False,
                      check=lambda ws, r: "it wrote a run folder" if (ws / "logs").exists() else None))
    return cases


# --- running and judging --------------------------------------------------------------------------------------------


LOADS = [0]


@contextlib.contextmanager
def counting_loads():
    import textinv.generation.session as session
    import textinv.models.loading as loading
    import textinv.training.setup as setup

    real = loading.load_pipeline

    def counted(*args, **kwargs):
        LOADS[0] += 1
        return real(*args, **kwargs)

    saved = [(m, m.load_pipeline) for m in (loading, session, setup)]
    for m, _ in saved:
        m.load_pipeline = counted
    try:
        yield
    finally:
        for m, f in saved:
            m.load_pipeline = f


def judge(case: Case, result, ws: Path, loads: int) -> str | None:
    """None when the case ended clean, else what went wrong."""
    exc = result.exception
    err = result.stderr or ""
    if case.expect == "traceback":
        return None if exc is not None and not isinstance(exc, SystemExit) else "no traceback with --debug"
    if exc is not None and not isinstance(exc, SystemExit):
        return f"traceback: {type(exc).__name__}: {str(exc)[:200]}"
    if "Traceback" in err:
        return "a traceback on stderr"
    if case.expect == "ok" and result.exit_code != 0:  # "any": a result or an error, judged by the check alone
        return f"exit {result.exit_code}: {err.strip()[-300:]}"
    if case.expect == "error":
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        if result.exit_code in (0, None):
            return "accepted"
        if "No such option" in err:  # the kind is out of date with the command line: it tried nothing
            return f"the case passes a flag the command no longer has: {err.strip()[-200:]!r}"
        if result.exit_code == 2 and ("Invalid value" in err or "Missing" in err):
            errors = ["error: (Typer's usage message)"]  # the command line's own check of a flag's range or type
        if len(errors) != 1:
            return f"{len(errors)} error lines: {err.strip()[-300:]!r}"
        if case.before_load and loads:
            return f"the model loaded before: {errors[0][:200]}"
    return case.check(ws, result) if case.check else None


def run_case(case: Case, ws: Path) -> str | None:
    from typer.testing import CliRunner

    from textinv.cli import app
    from textinv.cli_output import state

    if case.prepare:
        case.prepare(ws)
    if case.group in ("signals", "accelerate"):
        return judge(case, case.argv(ws), ws, 0)
    LOADS[0] = 0
    state.update(debug=False, quiet=False)
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        with counting_loads():
            result = CliRunner().invoke(app, [str(a) for a in case.argv(ws)])
    finally:
        os.chdir(cwd)
    return judge(case, result, ws, LOADS[0])


def main() -> int:
    global FIX
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="run the kinds whose group or name holds this word")
    ap.add_argument("--no-processes", action="store_true", help="skip the kinds that start real processes")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="textinv-campaign-") as tmp:
        os.environ["HF_HOME"] = str(Path(tmp) / "hf-home")
        FIX = Path(tmp) / "fix"
        make_fixtures(FIX)
        cases = file_cases() + config_cases() + flag_cases() + resume_cases()
        if not args.no_processes:
            cases += process_cases()
        if args.only:
            cases = [c for c in cases if args.only in c.group or args.only in c.name]
        groups: dict[str, list[int]] = {}
        start = time.monotonic()
        for i, case in enumerate(cases):
            ws = Path(tmp) / f"case-{i}"
            ws.mkdir()
            try:
                problem = run_case(case, ws)
            except Exception as e:  # the campaign's own preparation failed: count it as left, say so
                problem = f"the case could not run: {type(e).__name__}: {e}"
            tried_clean = groups.setdefault(case.group, [0, 0])
            tried_clean[0] += 1
            tried_clean[1] += problem is None
            if problem:
                print(f"LEFT  {case.group}: {case.name}: {problem}", flush=True)
            shutil.rmtree(ws, ignore_errors=True)
        print(f"\n{'group':12} {'kinds':>6} {'clean':>6} {'left':>5}")
        for group, (tried, clean) in groups.items():
            print(f"{group:12} {tried:6} {clean:6} {tried - clean:5}")
        tried, clean = sum(t for t, _ in groups.values()), sum(c for _, c in groups.values())
        print(f"{'all':12} {tried:6} {clean:6} {tried - clean:5}   ({time.monotonic() - start:.0f} s)")
        (FIX / "ro").chmod(0o755)
        return 0 if tried == clean else 1


if __name__ == "__main__":
    sys.exit(main())
