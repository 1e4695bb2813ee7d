"""Property-based tests of every reader of files from elsewhere (issue 25): a mutated or truncated .pt, .bin,
.safetensors, PNG embedding, sd-concepts folder, YAML config, state file or PNG parameters chunk ends in a result
or one clear error line, never a traceback, a hang or a jump in memory (tests/fuzz_targets.py says how).

The budgets here are small, for the fast suite; `make fuzz` (bench/fuzz.py) runs the same targets with larger
ones. Inputs the fuzzing found dirty are kept below as regular tests."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz_targets import TARGETS, outcome, png_with_text, run_worker

EXAMPLES = 20  # per target here; `make fuzz` runs 2000


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_seed_reads(name):
    target = TARGETS[name]
    seeds = target.seeds()
    assert seeds
    for data in seeds:
        assert outcome(target, data).kind == "result", outcome(target, data).detail


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_mutated_input_ends_in_a_result_or_one_clear_line(name):
    target = TARGETS[name]

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(target.inputs())
    def check(data):
        got = outcome(target, data)
        assert got.kind != "dirty", got.detail

    check()


def test_memory_stays_bounded_in_a_fresh_process(tmp_path):
    """Peak resident memory of a fresh interpreter reading mutated inputs of every target (after a warm-up on the
    seeds), as tests/test_formats.py measures its bombs: torch's and zlib's allocations count too."""
    reports = run_worker(sorted(TARGETS), 6, tmp_path / "kept")
    assert sorted(r["target"] for r in reports) == sorted(TARGETS)
    for r in reports:
        assert r["dirty"] == [], r["dirty"]
        assert r["rss_growth_kib"] < 256 * 1024, (r["target"], r["rss_growth_kib"], r["peak_input"])


# --- inputs the fuzzing found, kept as regular tests ----------------------------------------------------------------


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n" + bytes(40), b"not a picture", b""])
def test_png_parameters_of_a_file_that_is_no_png_is_one_line(data):
    got = outcome(TARGETS["png-parameters"], data)
    assert got.kind == "clean" and "not a readable PNG" in got.detail and got.detail.count("input.png") == 1


def test_png_parameters_with_a_broken_quoted_value_keeps_it_as_written(tmp_path):
    from textinv.generation.metadata import read_parameters

    path = tmp_path / "x.png"
    path.write_bytes(png_with_text({"parameters": 'a cat\nSteps: 20, TI hashes: "<cat>: 4f1c, Seed: 7'}))
    params = read_parameters(path)
    assert params["Prompt"] == "a cat" and params["Steps"] == "20"
    assert params["TI hashes"].startswith('"<cat>')


def test_a_key_with_a_line_break_stays_on_one_line(tmp_path):
    import torch

    from textinv.errors import EmbeddingFormatError
    from textinv.formats.files import load_embedding

    path = tmp_path / "x.bin"
    torch.save({"\x98/\n3Q": 1, "name": "x"}, path)  # found by the fuzzing: a key of random bytes with a newline
    with pytest.raises(EmbeddingFormatError) as e:
        load_embedding(path)
    assert "\n" not in str(e.value) and "unexpected keys '\\x98/\\n3Q'" in str(e.value)


def test_a_base_with_a_line_break_stays_on_one_line(tmp_path):
    from textinv.config import load_config
    from textinv.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text('base: "config file text\\n"\n')  # found by `make fuzz` in CI: a base: that names no file
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "\n" not in str(e.value) and "config file 'config file text\\n' not found" in str(e.value)


def test_an_embedding_layout_with_no_tokens_is_refused(tmp_path):
    import base64
    import json

    from textinv.errors import EmbeddingFormatError
    from textinv.formats.files import load_embedding

    path = tmp_path / "x.png"  # found by the fuzzing: accepted with no tokens, then an IndexError in inspect
    payload = {"string_to_param": {}, "clip_l": {}, "t5xxl": {"TORCHTENSOR": []}}
    path.write_bytes(png_with_text({"sd-ti-embedding": base64.b64encode(json.dumps(payload).encode()).decode()}))
    with pytest.raises(EmbeddingFormatError, match="a1111-png layout holding no tokens"):
        load_embedding(path)


def test_an_error_line_never_breaks(capsys):
    from textinv.cli_output import print_error

    print_error("x.pt: embedding <a\nb> is ...\rerror: forged")
    assert capsys.readouterr().err == "error: x.pt: embedding <a\\nb> is ...\\rerror: forged\n"


@pytest.mark.parametrize("container", ["png", "pt"])
def test_a_name_or_token_table_that_is_no_text_is_ignored(tmp_path, container):
    import base64
    import json

    import torch

    from textinv.formats.files import load_embedding

    if container == "png":  # found by the fuzzing: `name` a tensor, then `bool(tensor)` raised in the reader
        payload = {"string_to_param": {"*": {"TORCHTENSOR": [[0.5] * 8]}}, "name": {"TORCHTENSOR": []}, "step": 1}
        path = tmp_path / "x.png"
        path.write_bytes(png_with_text({"sd-ti-embedding": base64.b64encode(json.dumps(payload).encode()).decode()}))
    else:
        path = tmp_path / "x.pt"
        torch.save({"string_to_token": torch.zeros(0), "string_to_param": {"*": torch.ones(1, 8)},
                    "name": torch.zeros(0), "step": 1}, path)
    emb = load_embedding(path)
    assert [t.name for t in emb.tokens] == ["x"] and emb.name is None


def test_a_zip_of_a_version_python_cannot_read_is_one_line(tmp_path):
    import torch

    from textinv.errors import EmbeddingFormatError
    from textinv.formats.files import load_embedding

    path = tmp_path / "x.pt"
    torch.save({"<x>": torch.ones(1, 8)}, path)
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")  # the first central-directory record: "version needed to extract" at +6
    data[at + 6:at + 8] = (132).to_bytes(2, "little")  # found by the fuzzing: zipfile's NotImplementedError
    path.write_bytes(bytes(data))
    with pytest.raises(EmbeddingFormatError, match=r"truncated or corrupt \(zip file version 13.2\)"):
        load_embedding(path)


def test_a_pickle_memo_bomb_of_a_few_bytes_is_refused_in_bounded_memory(tmp_path):
    from tests.test_formats import _refusal_and_memory

    # found by the fuzzing: a mutated legacy .pt whose LONG_BINPUT named memo index 1258647924; the C unpickler
    # sizes its memo array by the index and zeroes it: 16 GB and the kernel's OOM killer. 2^26 here: 1 GiB before.
    path = tmp_path / "bomb.pt"
    path.write_bytes(b"\x80\x02}r" + (2**26).to_bytes(4, "little") + b".")
    error, grew = _refusal_and_memory(path)
    assert "bomb.pt: " in error and "\n" not in error
    assert grew < 64 * 2**20, grew
