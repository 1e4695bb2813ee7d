"""Files that say where they came from, not where they were (issue 23): no path of this machine in what train,
convert, merge and generate write; the model recorded by name; what a `.pt` can carry beyond AUTOMATIC1111's six
keys, checked against each loader's own code; config.yaml normalised and kept current after a resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from textinv.cli import app
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import load_embedding, save_embedding

from .test_train import make_images

runner = CliRunner()
PACKAGE = Path(__file__).resolve().parents[1] / "textinv"


def _machine_paths(tmp_path_factory) -> list[str]:
    """Paths of this machine that must not appear in a written file: the tests' temporary root (which holds the
    images, the model and the outputs), the checkout and the home folder."""
    paths = [str(tmp_path_factory.getbasetemp()), str(PACKAGE.parent)]
    home = str(Path.home())
    return [p for p in (*paths, home) if len(p) > 4]


def _files(folder: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    return [f for f in sorted(folder.rglob("*")) if f.is_file() and f.name not in skip]


def _paths_in(files: list[Path], machine: list[str]) -> list[str]:
    found = []
    for f in files:
        data = f.read_bytes()
        found += [f"{f.name}: {p}" for p in machine if p.encode() in data or p.encode("utf-16-le") in data]
    return found


def test_train_convert_merge_generate_write_no_path_of_this_machine(tmp_path, tiny_model_dir, tmp_path_factory,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = make_images(tmp_path / "my_cat")
    res = runner.invoke(app, ["train", str(images / ".." / "my_cat"), "-i", "cat", "--model", str(tiny_model_dir),
                              "--max-steps", "2", "--out", str(tmp_path / "logs"), "--set", "data.resolution=32",
                              "--set", "log.image_every=2", "--set", "log.save_every=1", "--set", "log.sample_steps=1",
                              "--set", "log.num_images=1", "--set", "log.formats=[pt, safetensors, bin]"])
    assert res.exit_code == 0, res.output
    (run,) = (tmp_path / "logs").iterdir()
    final = run / "embeddings" / "my_cat.pt"
    emb = load_embedding(final)
    # the model by its name; the init word and the run's name travel in the .pt
    assert (emb.base_model, emb.init_words, emb.name, emb.step) == (tiny_model_dir.name, {"*": "cat"}, "my_cat", 2)
    out = tmp_path / "out"
    res = runner.invoke(app, ["convert", str(final), str(out / "cat.safetensors"), "--token", "<cat>"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["merge", str(final), str(out / "cat.safetensors"), "-o", str(out / "both.pt")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["generate", "a photo of <cat>", "--model", str(tiny_model_dir), "-e",
                              str(out / "cat.safetensors"), "-n", "2", "--steps", "1", "--out", str(out / "pngs")])
    assert res.exit_code == 0, res.output
    # config.yaml is the run folder's own record of where its pictures and model are (resume reads it)
    written = _files(run, skip=("config.yaml",)) + _files(out)
    assert len(written) > 15 and any(f.suffix == ".png" for f in _files(out / "pngs"))
    assert _paths_in(written, _machine_paths(tmp_path_factory)) == []
    config = (run / "config.yaml").read_text()
    assert "/../" not in config and str(images) in config  # normalised, absolute


def test_the_scan_sees_a_path_written_into_a_file(tmp_path, tmp_path_factory):
    leaky = save_embedding(Embedding([Token("*", torch.ones(1, 8))], base_model=str(tmp_path / "model")),
                           tmp_path / "leaky.pt")
    assert _paths_in([leaky], _machine_paths(tmp_path_factory)) != []


def test_resume_with_more_steps_updates_the_saved_config(tmp_path, tiny_model_dir):
    images = make_images(tmp_path / "cat")
    args = ["train", str(images), "-i", "cat", "--model", str(tiny_model_dir), "--max-steps", "2", "--out",
            str(tmp_path / "logs"), "--set", "data.resolution=32", "--set", "log.image_every=0", "--set",
            "log.save_every=1"]
    assert runner.invoke(app, args).exit_code == 0
    (run,) = (tmp_path / "logs").iterdir()
    first_line = (run / "config.yaml").read_text().splitlines()[0]
    res = runner.invoke(app, ["train", "--resume", str(run), "--max-steps", "3"])
    assert res.exit_code == 0, res.output
    text = (run / "config.yaml").read_text()
    assert yaml.safe_load(text)["train"]["max_steps"] == 3
    assert text.splitlines()[0] == first_line and first_line.startswith("# effective batch")


# --- what the files keep ----------------------------------------------------------------------------------------


def _emb(name: str, step: int | None, **kw) -> Embedding:
    return Embedding([Token(name, torch.randn(1, 8))], name="cats", step=step, init_words={name: "cat"}, **kw)


def test_convert_keeps_the_init_words_in_a_pt(tmp_path):
    src = save_embedding(_emb("<cat>", 500, extra={"learnable_property": "style"}), tmp_path / "cat.safetensors")
    res = runner.invoke(app, ["convert", str(src), str(tmp_path / "cat.pt")])
    assert res.exit_code == 0, res.output
    back = load_embedding(tmp_path / "cat.pt")
    assert (back.init_words, back.name, back.step, back.extra) == ({"<cat>": "cat"}, "cats", 500,
                                                                   {"learnable_property": "style"})


def test_merge_keeps_step_and_name_when_the_files_agree(tmp_path):
    a = save_embedding(_emb("<a>", 500), tmp_path / "a.pt")
    b = save_embedding(_emb("<b>", 500), tmp_path / "b.pt")
    c = save_embedding(_emb("<c>", 300), tmp_path / "c.pt")
    assert runner.invoke(app, ["merge", str(a), str(b), "-o", str(tmp_path / "ab.pt")]).exit_code == 0
    ab = load_embedding(tmp_path / "ab.pt")
    assert (ab.step, ab.name, ab.init_words) == (500, "cats", {"<a>": "cat", "<b>": "cat"})
    assert runner.invoke(app, ["merge", str(a), str(c), "-o", str(tmp_path / "ac.pt")]).exit_code == 0
    assert load_embedding(tmp_path / "ac.pt").step in (None, 0)  # two different steps: none is claimed
    assert runner.invoke(app, ["merge", str(a), "-o", str(tmp_path / "a2.pt")]).exit_code == 0
    assert load_embedding(tmp_path / "a2.pt").step == 500


def test_a_malformed_textinv_key_in_a_pt_is_a_warning_not_an_error(tmp_path):
    from textinv.errors import MetadataWarning

    path = save_embedding(_emb("<cat>", 5), tmp_path / "cat.pt")
    data = torch.load(path, weights_only=True)
    data["textinv"] = {"init_words": ["not", "a", "dict"], "name": 7}
    torch.save(data, path)
    with pytest.warns(MetadataWarning):
        back = load_embedding(path)
    assert back.init_words == {} and back.tokens[0].name == "<cat>"


# --- the extra `textinv` key of a .pt, against each loader's code -------------------------------------------------
# Each loader below reads the tensors of a `.pt` dict holding `string_to_param` by that key and looks up only the
# other keys it names, so a further key holding a dict of strings changes nothing it reads:
# - AUTOMATIC1111 stable-diffusion-webui, commit 22ecb78b51f7e6f0234cbc0efbde4ee9a2dc466f (2023-08-05, v1.5),
#   modules/textual_inversion/textual_inversion.py `EmbeddingDatabase.load_from_file` (line 157): line 178
#   `torch.load(path, ...)` (through modules/safe.py's RestrictedUnpickler, find_class line 34, which a dict of
#   strings does not call: A1111_GLOBALS in test_formats.py), line 186 `if 'string_to_param' in data:` takes its
#   only value, lines 211-213 `data.get('step')`, `data.get('sd_checkpoint')`, `data.get('sd_checkpoint_name')`.
# - ComfyUI (Comfy-Org/ComfyUI), commit a125cd84b054a57729b5eecab930ca9408719832 (2025-10-12, v0.1.1113+76),
#   comfy/sd1_clip.py `load_embed` (line 391): line 431 `torch.load(embed_path, weights_only=True, ...)`, line 439
#   `if 'string_to_param' in embed:` the first value.
# - InvokeAI, commit 8e71a8a519399d6db32054ae9afc7c6c4e2355af (2026-08-19, 6.11.0rc1+406),
#   invokeai/backend/textual_inversion.py lines 39-46 `TextualInversionModelRaw.from_checkpoint`: the first value
#   of string_to_param; its probe, invokeai/backend/model_manager/configs/textual_inversion.py line 54 (an
#   embedding if any key is string_to_param) and lines 75-76 (the width is string_to_param's first value's
#   shape[-1]); picklescan (model_on_disk.py line 119) flags only dangerous globals.
# - kohya-ss sd-scripts, commit 48d368fa557731ad0488c07304dfeba8c07910eb (2026-02-16, v0.10.1+5), gen_img.py
#   lines 2100-2107 (and sdxl_gen_img.py lines 1871-1872, train_textual_inversion.py lines 171-172):
#   `data = data["string_to_param"]`, then `next(iter(data.values()))`.


def _as_loader(tool: str, data: dict) -> torch.Tensor:
    """The tensor `tool` takes from a .pt dict, following the code cited above line by line."""
    if tool == "a1111":
        params = data["string_to_param"]
        assert len(params) == 1, "embedding file has multiple terms in it"
        return next(iter(params.items()))[1]
    if tool in ("comfyui", "invokeai"):
        return next(iter(data["string_to_param"].values()))
    if tool == "kohya":
        return next(iter(data["string_to_param"].values()))
    raise AssertionError(tool)


@pytest.mark.parametrize("tool", ["a1111", "comfyui", "invokeai", "kohya"])
def test_every_loader_reads_the_same_tensor_with_or_without_our_key(tmp_path, tool):
    from .test_formats import A1111_GLOBALS, A1111_ZIP_NAMES, _pickle_globals

    emb = _emb("<cat>", 500, extra={"learnable_property": "object", "base_model_revision": "abc"})
    ours = torch.load(save_embedding(emb, tmp_path / "ours.pt"), weights_only=True)  # ComfyUI's own call
    assert isinstance(ours["textinv"], dict) and ours["textinv"]["init_words"] == {"<cat>": "cat"}
    plain = {k: v for k, v in ours.items() if k != "textinv"}
    assert torch.equal(_as_loader(tool, ours), _as_loader(tool, plain))
    assert all(isinstance(k, str) and isinstance(v, str) for part in ("init_words", "extra")
               for k, v in ours["textinv"][part].items())
    if tool == "a1111":
        import zipfile

        with zipfile.ZipFile(tmp_path / "ours.pt") as z:
            assert all(A1111_ZIP_NAMES.match(n) for n in z.namelist())
            (pkl,) = [n for n in z.namelist() if n.endswith("/data.pkl")]
            assert _pickle_globals(z.read(pkl)) <= A1111_GLOBALS
    if tool == "invokeai":  # the probe: an embedding by its keys, SD1.x by the width
        assert any(key in {"string_to_param", "emb_params", "clip_g"} for key in ours)
        assert next(iter(ours["string_to_param"].values())).shape[-1] == 8
