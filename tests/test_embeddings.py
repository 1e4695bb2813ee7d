"""Reading, writing, converting and merging embedding files (textinv/embeddings.py, textinv/safe_pickle.py)."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from textinv.errors import (
    EmbeddingFormatError,
    ModelError,
    OutputExistsError,
    TextinvError,
    UnsafeFileError,
    UsageError,
)
from textinv.formats.edit import describe_embedding, describe_files, merge_embeddings, rename_or_pick
from textinv.formats.embedding import Embedding, Token
from textinv.formats.files import WRITE_FORMATS, load_embedding, save_embedding, write_files

# file -> (format, family, [(vectors, dim, dim_2 or None)]), as PROVENANCE.md gives them
REAL = {
    "sd-concepts_birb-style_learned_embeds.bin": ("diffusers-bin", "SD1.x", [(1, 768, None)]),
    "sd-concepts-dir_na-tarapisu153": ("sd-concepts-folder", "SD1.x", [(1, 768, None)]),
    "sd-concepts-dir_na-tarapisu153/na-tarapisu153.bin": ("diffusers-bin", "SD1.x", [(1, 768, None)]),
    "diffusers-sd2_vanellope2_learned_embeds.bin": ("diffusers-bin", "SD2.x", [(1, 1024, None)]),
    "diffusers_detail-schemas_learned_embeds.safetensors": ("diffusers-safetensors", "SD1.x", [(1, 768, None)]),
    "diffusers_singleinsert_learned_embeds.bin": ("diffusers-bin", "SD1.x", [(1, 768, None)]),
    "a1111_bad-hands-5.pt": ("a1111-pt", "SD1.x", [(2, 768, None)]),
    "a1111_bad_prompt_version2.pt": ("a1111-pt", "SD1.x", [(8, 768, None)]),
    "a1111_eyeliner2.pt": ("a1111-pt", "SD1.x", [(3, 768, None)]),
    "a1111-sd2_cartoonish_doll.pt": ("a1111-pt", "SD2.x", [(8, 1024, None)]),
    "a1111-sd2_dgtlv2.pt": ("a1111-pt", "SD2.x", [(12, 1024, None)]),
    "a1111-embeddingmerge_SD1.5-HairDetail.pt": ("a1111-pt", "SD1.x", [(3, 768, None)]),
    "a1111_EasyNegative.safetensors": ("a1111-safetensors", "SD1.x", [(8, 768, None)]),
    "sdxl_a1111-embeddingmerge_SDXL-Detail.safetensors": ("sdxl-safetensors", "SDXL", [(2, 768, 1280)]),
    "sdxl_kohya_unaestheticXLv31.safetensors": ("kohya-sdxl", "SDXL", [(8, 768, 1280)]),
    "sdxl_xl-inversion_myPuppet768.pt": ("xl-inversion", "SDXL", [(1, 768, 1280)]),
    "sdxl_xl-inversion_allmyPuppet768_list.pt": ("xl-inversion-list", "SDXL", [(1, 768, 1280)]),
    "a1111_png_test_embedding.png": ("a1111-png", "SD1.x", [(8, 768, None)]),
    "paper-code_embeddings_parameterdict.pt": ("paper-pt", "SD1.x", [(1, 768, None)]),
    "paper-code_hades_parameterdict_keys.pt": ("paper-pt", "SD1.x", [(17, 768, None)]),
    "paper-code_embeddings_mps_numpy.pt": ("paper-pt", "SD1.x", [(1, 768, None)]),
}
UNSUPPORTED = {"t5xxl_T5-CharDetail_a1111_weighted.safetensors": "T5-XXL"}


def test_every_real_file_is_listed_here(real_embeddings):
    on_disk = {p.name for p in real_embeddings.iterdir() if p.name != "PROVENANCE.md"}
    assert on_disk == {k.split("/")[0] for k in REAL} | set(UNSUPPORTED)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_file_reads_with_its_format_and_shapes(real_embeddings, name):
    fmt, family, shapes = REAL[name]
    emb = load_embedding(real_embeddings / name)
    assert emb.source_format == fmt
    assert emb.family == family
    got = [(t.num_vectors, t.dim, None if t.vectors_2 is None else t.vectors_2.shape[1]) for t in emb.tokens]
    assert got == shapes
    for tok in emb.tokens:
        assert tok.vectors.dtype == torch.float32 and not tok.vectors.requires_grad
        assert torch.isfinite(tok.vectors).all()


def test_real_file_metadata(real_embeddings):
    a1111 = load_embedding(real_embeddings / "a1111_bad-hands-5.pt")
    assert (a1111.name, a1111.step, a1111.base_model, a1111.base_model_hash) == (
        "bad-hands-5", 1419, "7th7-any3", "5d2f8777af")
    assert a1111.tokens[0].name == "a1111_bad-hands-5"  # AUTOMATIC1111's prompt word is the file stem
    assert load_embedding(real_embeddings / "sd-concepts_birb-style_learned_embeds.bin").tokens[0].name == "<birb-style>"
    folder = load_embedding(real_embeddings / "sd-concepts-dir_na-tarapisu153")
    assert folder.tokens[0].name == "<na-tarapisu153>" and folder.extra["concept_type"] == "style"
    png = load_embedding(real_embeddings / "a1111_png_test_embedding.png")
    assert (png.tokens[0].name, png.step) == ("rick", 60)
    kohya = load_embedding(real_embeddings / "sdxl_kohya_unaestheticXLv31.safetensors")
    assert kohya.tokens[0].source_dtype == "float16" and kohya.name == "unaestheticXLv31"
    snapshots = load_embedding(real_embeddings / "sdxl_xl-inversion_allmyPuppet768_list.pt")
    assert snapshots.extra["snapshots"] == "11"
    assert snapshots.tokens[0].source_dtype == "bfloat16"
    paper = load_embedding(real_embeddings / "paper-code_hades_parameterdict_keys.pt")
    assert paper.tokens[0].name == "*"
    assert paper.tokens[0].vectors.norm(dim=1).mean().item() == pytest.approx(15.83, abs=0.01)


def test_t5_file_is_recognised_and_refused(real_embeddings):
    with pytest.raises(EmbeddingFormatError, match="T5-XXL.*not a CLIP textual-inversion"):
        load_embedding(real_embeddings / "t5xxl_T5-CharDetail_a1111_weighted.safetensors")


def _writable(emb: Embedding) -> list[str]:
    single = len(emb.tokens) == 1
    one_encoder_only = ("a1111-png", "paper-pt", "sd-concepts-folder")
    return [f for f in WRITE_FORMATS if (single or f == "paper-pt") and not (emb.is_sdxl and f in one_encoder_only)]


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_file_converts_to_every_format_and_back(real_embeddings, tmp_path, name):
    emb = load_embedding(real_embeddings / name)
    for fmt in _writable(emb):
        out = save_embedding(emb, tmp_path / f"out-{fmt}", format=fmt)
        back = load_embedding(out)
        assert len(back.tokens) == len(emb.tokens), fmt
        for a, b in zip(emb.tokens, back.tokens, strict=True):
            assert torch.equal(a.vectors, b.vectors), fmt
            assert (a.vectors_2 is None) == (b.vectors_2 is None)
            if a.vectors_2 is not None:
                assert torch.equal(a.vectors_2, b.vectors_2), fmt
        assert back.family == emb.family


def _emb(names=("<cat>",), n=2, dim=32, seed=0, sdxl=False) -> Embedding:
    g = torch.Generator().manual_seed(seed)
    toks = [Token(nm, torch.randn(n, dim, generator=g), torch.randn(n, 1280, generator=g) if sdxl else None)
            for nm in names]
    return Embedding(toks, name="cat", step=500, base_model="sd15", base_model_hash="abcdef0123",
                     init_words={names[0]: "cat"})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 6),
    dim=st.sampled_from([1, 8, 768, 1024]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    fmt=st.sampled_from(sorted(WRITE_FORMATS)),
    one_d=st.booleans(),
    grad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_round_trip_is_lossless_for_random_shapes_and_dtypes(tmp_path_factory, n, dim, dtype, fmt, one_d, grad, seed):
    g = torch.Generator().manual_seed(seed)
    raw = (torch.randn(n, dim, generator=g) * 3).to(dtype)
    if one_d:
        raw = raw[0]
    raw.requires_grad_(grad)
    src = tmp_path_factory.mktemp("rt") / "in.bin"
    torch.save({"<tok>": raw}, src)
    emb = load_embedding(src)
    expected = raw.detach().float().reshape(-1, dim)
    assert torch.equal(emb.tokens[0].vectors, expected)
    out = save_embedding(emb, src.with_name("out"), format=fmt)
    back = load_embedding(out)
    assert torch.equal(back.tokens[0].vectors, expected)


def test_safetensors_metadata_travels(tmp_path):
    emb = _emb(names=("<cat>",))
    out = save_embedding(emb, tmp_path / "x.safetensors")
    back = load_embedding(out)
    assert [t.name for t in back.tokens] == ["<cat>"]
    assert (back.name, back.step, back.base_model, back.base_model_hash) == ("cat", 500, "sd15", "abcdef0123")
    assert back.init_words == {"<cat>": "cat"}
    kohya = load_embedding(save_embedding(_emb(), tmp_path / "k.safetensors", format="kohya"))
    assert kohya.source_format == "kohya" and kohya.tokens[0].name == "<cat>" and kohya.step == 500


def test_pt_has_the_keys_automatic1111_reads_and_ours_of_strings(tmp_path):
    out = save_embedding(_emb(), tmp_path / "cat.pt")
    data = torch.load(out, weights_only=True, map_location="cpu")  # loads without any allow-listing
    # AUTOMATIC1111's six keys, and (issue 23) `textinv`: strings only, which every loader skips
    # (tests/test_provenance.py names each loader's rule)
    assert set(data) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name",
                         "textinv"}
    assert data["textinv"] == {"name": "cat", "init_words": {"<cat>": "cat"}}
    assert list(data["string_to_param"]) == ["*"] and data["string_to_param"]["*"].shape == (2, 32)
    assert int(data["string_to_token"]["*"]) == 265
    assert (data["name"], data["step"], data["sd_checkpoint"], data["sd_checkpoint_name"]) == (
        "<cat>", 500, "abcdef0123", "sd15")
    back = load_embedding(out)
    assert back.tokens[0].name == "<cat>" and back.source_format == "a1111-pt"


def test_multi_token_pt_is_the_paper_layout(tmp_path):
    out = save_embedding(_emb(names=("*", "@")), tmp_path / "both.pt")
    data = torch.load(out, weights_only=True)
    assert list(data["string_to_param"]) == ["*", "@"]
    assert [int(v) for v in data["string_to_token"].values()] == [265, 287]  # CLIP ids of '*</w>' and '@</w>'
    assert [t.name for t in load_embedding(out).tokens] == ["*", "@"]


def test_single_vector_bin_is_one_dimensional(tmp_path):
    out = save_embedding(_emb(n=1), tmp_path / "learned_embeds.bin")
    assert torch.load(out, weights_only=True)["<cat>"].shape == (32,)


def test_sdxl_writes_clip_l_and_clip_g(tmp_path):
    emb = _emb(dim=768, sdxl=True)
    out = save_embedding(emb, tmp_path / "xl.safetensors")
    data = load_file(out)
    assert set(data) == {"clip_l", "clip_g"} and data["clip_g"].shape == (2, 1280)
    back = load_embedding(out)
    assert back.family == "SDXL" and back.tokens[0].name == "<cat>"
    with pytest.raises(EmbeddingFormatError, match="SDXL"):
        save_embedding(emb, tmp_path / "xl.png")


# --- safety and bad input ------------------------------------------------------------------------------------


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zipped", [True, False])
def test_pickle_that_runs_code_is_refused_and_the_code_never_runs(tmp_path, zipped):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"<cat>": torch.ones(768), "x": _Exploit(marker)}, evil, _use_new_zipfile_serialization=zipped)
    with pytest.raises(UnsafeFileError, match="posix.system|os.system"):
        load_embedding(evil)
    assert not marker.exists()


def test_plain_pickle_exploit_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps(_Exploit(marker), protocol=2))
    with pytest.raises(EmbeddingFormatError):
        load_embedding(evil)
    assert not marker.exists()


def test_bad_files_each_get_their_own_message(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(EmbeddingFormatError, match="empty"):
        load_embedding(empty)

    good = tmp_path / "good.pt"
    torch.save({"<cat>": torch.ones(2, 768)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(EmbeddingFormatError, match="truncated"):
        load_embedding(truncated)

    st_file = tmp_path / "good.safetensors"
    save_file({"<cat>": torch.ones(2, 768)}, str(st_file))
    st_trunc = tmp_path / "trunc.safetensors"
    st_trunc.write_bytes(st_file.read_bytes()[:-100])
    with pytest.raises(EmbeddingFormatError, match="truncated"):
        load_embedding(st_trunc)

    no_tensors = tmp_path / "strings.pt"
    torch.save({"a": "b"}, no_tensors)
    with pytest.raises(EmbeddingFormatError, match="not a textual-inversion embedding"):
        load_embedding(no_tensors)

    empty_dict = tmp_path / "emptydict.pt"
    torch.save({}, empty_dict)
    with pytest.raises(EmbeddingFormatError, match="holds no tensors"):
        load_embedding(empty_dict)

    nan = tmp_path / "nan.safetensors"
    save_file({"<cat>": torch.tensor([[1.0, float("nan")], [float("inf"), 0.0]])}, str(nan))
    with pytest.raises(EmbeddingFormatError, match="2 NaN/inf"):
        load_embedding(nan)

    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as f:
        f.truncate(200 * 2**20)  # sparse: no disk used
    with pytest.raises(EmbeddingFormatError, match="far too large"):
        load_embedding(huge)

    text = tmp_path / "notes.pt"
    text.write_text("hello, not an embedding")
    with pytest.raises(EmbeddingFormatError, match="not an embedding file"):
        load_embedding(text)

    ints = tmp_path / "ints.bin"
    torch.save({"<cat>": torch.arange(10)}, ints)
    with pytest.raises(EmbeddingFormatError, match="not float vectors"):
        load_embedding(ints)

    with pytest.raises(EmbeddingFormatError, match="no such file"):
        load_embedding(tmp_path / "missing.pt")


def test_corrupt_zip_member_is_reported_as_corrupt(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"<cat>": torch.ones(768)}, good)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, data[:3] if item.filename.endswith("data.pkl") else data)
    with pytest.raises(EmbeddingFormatError, match="truncated or corrupt|not a readable"):
        load_embedding(bad)


def test_no_overwrite_without_force_and_atomic_write(tmp_path):
    out = tmp_path / "cat.safetensors"
    out.write_text("precious")
    with pytest.raises(OutputExistsError, match="--force"):
        save_embedding(_emb(), out)
    assert out.read_text() == "precious"
    save_embedding(_emb(), out, force=True)
    assert load_file(out)["<cat>"].shape == (2, 32)
    assert [p.name for p in tmp_path.iterdir()] == ["cat.safetensors"]  # no temp file left behind


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_embedding(_emb(), tmp_path / "cat.pt")
    assert list(tmp_path.iterdir()) == []


def test_unknown_extension_needs_to(tmp_path):
    with pytest.raises(EmbeddingFormatError, match="--to"):
        save_embedding(_emb(), tmp_path / "cat.emb")


# --- merge ---------------------------------------------------------------------------------------------------


def _file(tmp_path, fname, names, seed, dim=32):
    return load_embedding(save_embedding(_emb(names=names, dim=dim, seed=seed), tmp_path / fname))


def test_merge_conflict_is_an_error_naming_both_files(tmp_path):
    a, b = _file(tmp_path, "a.safetensors", ("*",), 1), _file(tmp_path, "b.bin", ("*",), 2)
    with pytest.raises(EmbeddingFormatError, match=r"'\*' is in both .*a.safetensors and .*b.bin"):
        merge_embeddings([a, b])


def test_merge_rename_and_skip(tmp_path):
    a, b = _file(tmp_path, "a.pt", ("*", "<x>"), 1), _file(tmp_path, "b.bin", ("*",), 2)
    renamed = merge_embeddings([a, b], on_conflict="rename")
    assert [t.name for t in renamed.tokens] == ["*", "<x>", "*_2"]
    assert torch.equal(renamed.token("*_2").vectors, b.tokens[0].vectors)
    skipped = merge_embeddings([a, b], on_conflict="skip")
    assert [t.name for t in skipped.tokens] == ["*", "<x>"]
    assert torch.equal(skipped.token("*").vectors, a.tokens[0].vectors)
    asked = merge_embeddings([a, b], on_conflict="ask", ask=lambda name, src: "<b>")
    assert [t.name for t in asked.tokens] == ["*", "<x>", "<b>"]


def test_merge_of_different_widths_is_refused(tmp_path, real_embeddings):
    sd1 = load_embedding(real_embeddings / "a1111_bad-hands-5.pt")
    sd2 = load_embedding(real_embeddings / "a1111-sd2_dgtlv2.pt")
    with pytest.raises(EmbeddingFormatError, match=r"SD1.x.*SD2.x.*different widths"):
        merge_embeddings([sd1, sd2])


def test_merge_of_real_files_of_different_formats(tmp_path, real_embeddings):
    files = ["a1111_bad-hands-5.pt", "sd-concepts_birb-style_learned_embeds.bin",
             "paper-code_hades_parameterdict_keys.pt", "a1111_EasyNegative.safetensors"]
    embs = [load_embedding(real_embeddings / f) for f in files]
    merged = merge_embeddings(embs)
    back = load_embedding(save_embedding(merged, tmp_path / "merged.pt"))  # the paper layout keeps them all
    assert [t.name for t in back.tokens] == ["a1111_bad-hands-5", "<birb-style>", "*", "a1111_EasyNegative"]
    for src, got in zip(embs, back.tokens, strict=True):
        assert torch.equal(src.tokens[0].vectors, got.vectors)
    for fmt in ("safetensors", "bin", "kohya", "png"):  # their readers would use one token, or refuse the file
        with pytest.raises(EmbeddingFormatError, match="--split.*--token"):
            save_embedding(merged, tmp_path / f"merged-{fmt}", format=fmt)


def test_describe_reports_shapes_and_norms(tmp_path):
    emb = Embedding([Token("<a>", torch.full((2, 4), 0.5))])
    desc = describe_embedding(emb)
    assert desc["tokens"] == [{"name": "<a>", "vectors": 2, "dim": 4, "dtype": "float32", "norm": 1.0}]
    assert desc["family"] == "unknown (dim 4)"
    assert json.loads(json.dumps(desc)) == desc


def _two_tokens() -> Embedding:
    return Embedding([Token("<a>", torch.ones(1, 4)), Token("<b>", torch.zeros(1, 4))], init_words={"<a>": "cat"})


def test_convert_token_renames_old_new_picks_one_of_several_or_renames_the_only_one():
    renamed = rename_or_pick(_two_tokens(), "<a>=<c>")
    assert [t.name for t in renamed.tokens] == ["<c>", "<b>"] and renamed.init_words == {"<c>": "cat"}
    picked = rename_or_pick(_two_tokens(), "<b>")
    assert [t.name for t in picked.tokens] == ["<b>"] and torch.equal(picked.tokens[0].vectors, torch.zeros(1, 4))
    only = rename_or_pick(Embedding([Token("<a>", torch.ones(1, 4))], init_words={"<a>": "cat"}), "<z>")
    assert [t.name for t in only.tokens] == ["<z>"] and only.init_words == {"<z>": "cat"}
    assert rename_or_pick(_two_tokens(), "<a>=x=y").tokens[0].name == "x=y"  # split at the first =
    with pytest.raises(TextinvError, match=r"^the embedding has 2 tokens \(<a>, <b>\); say which to rename$"):
        rename_or_pick(_two_tokens(), "<z>")
    with pytest.raises(TextinvError, match=r"^no token '<q>' in the embedding$"):
        rename_or_pick(_two_tokens(), "<q>=<z>")


def test_describe_files_adds_the_model_check_and_goes_on_after_a_bad_file(tmp_path):
    good = save_embedding(Embedding([Token("<a>", torch.full((2, 4), 0.5))]), tmp_path / "a.pt")
    misfit = save_embedding(Embedding([Token("<m>", torch.ones(1, 4))]), tmp_path / "m.pt")
    (tmp_path / "junk.pt").write_bytes(b"nope")

    def check(emb: Embedding) -> dict:
        if emb.tokens[0].name == "<m>":
            raise ModelError("<m> does not fit")
        return {"checked": [t.name for t in emb.tokens]}

    got = list(describe_files([good, tmp_path / "junk.pt", misfit, tmp_path / "gone.pt"], check=check))
    assert [d["path"] for d in got] == [str(p) for p in (good, tmp_path / "junk.pt", misfit, tmp_path / "gone.pt")]
    assert got[0]["model_check"] == {"checked": ["<a>"]} and got[0]["tokens"][0]["norm"] == 1.0
    assert "not an embedding file" in got[1]["error"] and set(got[1]) == {"path", "error"}
    assert got[2] == {"path": str(misfit), "error": "<m> does not fit"}
    assert got[3]["error"].endswith("no such file")
    assert "model_check" not in next(describe_files([good]))


def test_write_files_takes_a_layout_or_a_tool_not_both(tmp_path):
    with pytest.raises(UsageError, match=r"^--to and --for both choose the layout; give one$"):
        write_files(_two_tokens(), tmp_path / "x.pt", format="pt", for_tool="a1111")
    assert list(tmp_path.iterdir()) == []


# --- interoperability with diffusers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(tiny_model_dir)


def _row(pipe, token: str) -> torch.Tensor:
    token_id = pipe.tokenizer.convert_tokens_to_ids(token)
    assert token_id != pipe.tokenizer.unk_token_id, f"{token} not in the tokenizer"
    return pipe.text_encoder.get_input_embeddings().weight[token_id].detach()


@pytest.mark.parametrize("fmt", ["bin", "safetensors", "pt"])
def test_written_files_load_in_diffusers_load_textual_inversion(tiny_pipe, tmp_path, real_embeddings, fmt):
    # a real sd-concepts file, rescaled to the tiny model's width, converted by us, loaded by diffusers
    real = load_embedding(real_embeddings / "sd-concepts_birb-style_learned_embeds.bin")
    vectors = real.tokens[0].vectors[:, :32].clone()
    emb = Embedding([Token(f"<birb-{fmt}>", vectors)], step=3000)
    out = save_embedding(emb, tmp_path / f"learned_embeds.{fmt}", format=fmt)
    tiny_pipe.load_textual_inversion(str(out))
    assert torch.equal(_row(tiny_pipe, f"<birb-{fmt}>"), vectors[0])


def test_multi_vector_safetensors_loads_as_tok_tok_1_in_diffusers(tiny_pipe, tmp_path):
    emb = _emb(names=("<multi>",), n=3, dim=32, seed=7)
    out = save_embedding(emb, tmp_path / "multi.safetensors")
    tiny_pipe.load_textual_inversion(str(out))
    for i, name in enumerate(["<multi>", "<multi>_1", "<multi>_2"]):
        assert torch.equal(_row(tiny_pipe, name), emb.tokens[0].vectors[i])
    assert tiny_pipe.maybe_convert_prompt("a <multi>", tiny_pipe.tokenizer) == "a <multi> <multi>_1 <multi>_2"


def test_pt_zip_record_prefix_is_archive_not_the_temp_name(tmp_path):
    out = save_embedding(_emb(), tmp_path / "cat.pt")
    with zipfile.ZipFile(out) as z:
        assert {n.split("/")[0] for n in z.namelist()} == {"archive"}


def test_merge_keeps_what_its_inputs_agree_on():
    a = Embedding([Token("<a>", torch.ones(1, 4))], step=100, base_model="sd15", base_model_hash="abc",
                  init_words={"<a>": "cat"})
    b = Embedding([Token("<b>", torch.zeros(1, 4))], step=200, base_model="sd15", base_model_hash="abc")
    merged = merge_embeddings([a, b])
    assert (merged.base_model, merged.base_model_hash, merged.init_words) == ("sd15", "abc", {"<a>": "cat"})
    b.base_model_hash = "def"
    assert merge_embeddings([a, b]).base_model_hash is None  # a disagreement is dropped, not guessed
    assert merge_embeddings([a]).step == 100
