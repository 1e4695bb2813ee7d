"""`textinv fetch` against a small hub served on 127.0.0.1 by the tests.

The server answers the endpoints huggingface_hub 2.4 really calls (read from its source):
- `GET /api/models/{repo}` (HfApi.model_info) -> {"id", "sha", "siblings": [{"rfilename"}], ...}
- `HEAD /{repo}/resolve/{revision}/{file}` (get_hf_file_metadata) -> ETag, X-Repo-Commit, Content-Length
- `GET  /{repo}/resolve/{revision}/{file}` (http_get) -> the bytes, honouring `Range: bytes=N-` on a resume
- `GET /api/models?author=&search=&sort=&limit=` (HfApi.list_models)
- errors as hf_raise_for_status reads them: the status plus `X-Error-Code` (RepoNotFound, GatedRepo,
  EntryNotFound, RevisionNotFound).
Nothing in huggingface_hub is mocked; only its import-time settings (constants) are pointed at the server.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from textinv.cli import app
from textinv.concepts.fetch import find_local, parse_concept_name
from textinv.errors import ConceptError

GOOD_TOKEN = "hf_good_token"


# --- the fake hub --------------------------------------------------------------------------------------------


@dataclass
class Repo:
    files: dict[str, bytes]
    private: bool = False
    gated: bool = False
    likes: int = 0
    downloads: int = 0

    @property
    def sha(self) -> str:
        h = hashlib.sha1()
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + self.files[name])
        return h.hexdigest()


@dataclass
class FakeHub:
    url: str = ""
    repos: dict[str, Repo] = field(default_factory=dict)
    log: list[tuple[str, str, dict]] = field(default_factory=list)  # (method, path, headers)
    info_status: int | None = None  # answer model-info requests with this error status
    get_status: dict[str, int] = field(default_factory=dict)  # file name -> error status for its GET
    drops: dict[str, int] = field(default_factory=dict)  # file name -> how many GETs to cut off mid-body

    def resolves(self, method: str = "GET") -> list[str]:
        return [p for m, p, _ in self.log if m == method and "/resolve/" in p]


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_HEAD(self):
            self._serve(head=True)

        def do_GET(self):
            self._serve(head=False)

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _error(self, status: int, code: str | None, head: bool, extra: dict | None = None):
            headers = {"Content-Type": "application/json", **(extra or {})}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, json.dumps({"error": code or "error"}).encode(), headers, head)

        def _json(self, obj, head: bool = False):
            self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"}, head)

        def _auth(self) -> str | None:
            value = self.headers.get("Authorization", "")
            return value.removeprefix("Bearer ") or None

        def _serve(self, head: bool):
            split = urlsplit(self.path)
            path = unquote(split.path)
            hub.log.append((self.command, path, dict(self.headers)))
            if path == "/api/models":
                return self._search(parse_qs(split.query), head)
            if path.startswith("/api/models/"):
                repo_id = "/".join(path.removeprefix("/api/models/").split("/")[:2])
                return self._info(repo_id, head)
            parts = path.lstrip("/").split("/")
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), head)
            self._error(404, None, head)

        def _repo(self, repo_id: str, head: bool) -> Repo | None:
            repo = hub.repos.get(repo_id)
            token = self._auth()
            # As the hub does: anonymous requests get 401 for missing and private repos alike.
            if repo is None or (repo.private and token != GOOD_TOKEN):
                self._error(401 if token is None else 404, "RepoNotFound", head)
                return None
            return repo

        def _info(self, repo_id: str, head: bool):
            if hub.info_status:
                return self._error(hub.info_status, None, head)
            repo = self._repo(repo_id, head)
            if repo is None:
                return
            self._json(
                {
                    "id": repo_id,
                    "author": repo_id.split("/")[0],
                    "sha": repo.sha,
                    "private": repo.private,
                    "gated": "manual" if repo.gated else False,
                    "likes": repo.likes,
                    "downloads": repo.downloads,
                    "tags": ["stable-diffusion", "textual-inversion"],
                    "siblings": [{"rfilename": name} for name in sorted(repo.files)],
                },
                head,
            )

        def _resolve(self, repo_id: str, revision: str, filename: str, head: bool):
            repo = self._repo(repo_id, head)
            if repo is None:
                return
            if repo.gated and self._auth() != GOOD_TOKEN:
                return self._error(401 if self._auth() is None else 403, "GatedRepo", head)
            if revision not in ("main", repo.sha):
                return self._error(404, "RevisionNotFound", head)
            commit = {"X-Repo-Commit": repo.sha}
            if filename not in repo.files:
                return self._error(404, "EntryNotFound", head, commit)
            data = repo.files[filename]
            headers = {**commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Accept-Ranges": "bytes"}
            headers["Content-Type"] = "application/octet-stream"
            if head:
                return self._send(200, data, headers, head=True)
            if filename in hub.get_status:
                return self._error(hub.get_status[filename], None, head)
            start = 0
            rng = self.headers.get("Range", "")
            if rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[len("bytes=") : -1])
            if hub.drops.get(filename, 0) > 0:
                hub.drops[filename] -= 1
                return self._drop(data[start:], headers)
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                return self._send(206, data[start:], headers)
            self._send(200, data, headers)

        def _drop(self, body: bytes, headers: dict):
            """Promise the whole body, send half of it, and hang up."""
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

        def _search(self, query: dict, head: bool):
            author = query.get("author", [""])[0]
            word = query.get("search", [""])[0].lower()
            limit = int(query.get("limit", ["1000"])[0])
            hits = [
                (rid, r)
                for rid, r in hub.repos.items()
                if rid.split("/")[0] == author and word in rid.split("/")[1].lower() and not r.private
            ]
            if query.get("sort", [""])[0] == "downloads":
                hits.sort(key=lambda item: -item[1].downloads)
            self._json(
                [
                    {"id": rid, "likes": r.likes, "downloads": r.downloads, "private": False}
                    for rid, r in hits[:limit]
                ],
                head,
            )

    return Handler


@pytest.fixture
def hub(monkeypatch, tmp_path):
    fake = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    _point_hub_at(monkeypatch, fake.url, tmp_path)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _point_hub_at(monkeypatch, url: str, tmp_path: Path) -> None:
    """HF_ENDPOINT for textinv (read at call time) and huggingface_hub's import-time copies of the settings."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def _go_offline(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _dead_endpoint(monkeypatch) -> str:
    """A 127.0.0.1 port with nothing listening: connections are refused at once."""
    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    return url


# --- concepts served -----------------------------------------------------------------------------------------


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class _RunsCode:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def concepts(hub, real_embeddings, tmp_path):
    """The hub's repos, and the tensors each one holds (read here with torch/safetensors, not with textinv)."""
    birb = (real_embeddings / "sd-concepts_birb-style_learned_embeds.bin").read_bytes()
    na_dir = real_embeddings / "sd-concepts-dir_na-tarapisu153"
    schemas = (real_embeddings / "diffusers_detail-schemas_learned_embeds.safetensors").read_bytes()
    hub.repos["sd-concepts-library/birb-style"] = Repo(
        {
            "learned_embeds.bin": birb,
            "token_identifier.txt": b"<birb-style>\n",
            "type_of_concept.txt": b"style\n",
            "README.md": b"# birb style\n",
            "concept_images/0.jpeg": b"\xff\xd8not really a jpeg",
        },
        likes=7,
        downloads=1200,
    )
    hub.repos["sd-concepts-library/na-tarapisu153"] = Repo(
        {
            "learned_embeds.bin": (na_dir / "na-tarapisu153.bin").read_bytes(),
            "token_identifier.txt": (na_dir / "token_identifier.txt").read_bytes(),
            "type_of_concept.txt": (na_dir / "type_of_concept.txt").read_bytes(),
        },
        likes=2,
        downloads=40,
    )
    hub.repos["sd-concepts-library/cat-toy"] = Repo(
        {
            "learned_embeds.bin": _torch_bytes(
                {"<cat-toy-key>": torch.arange(768, dtype=torch.float32) / 100}
            ),
            "token_identifier.txt": b"<cat-toy>",
            "type_of_concept.txt": b"object",
        },
        likes=30,
        downloads=5000,
    )
    hub.repos["sd-concepts-library/black-cat"] = Repo(
        {"learned_embeds.bin": birb, "type_of_concept.txt": b"object"}, likes=1, downloads=3
    )
    hub.repos["ttekcor/detail-schemas"] = Repo({"learned_embeds.safetensors": schemas, "README.md": b"hi"})
    hub.repos["sd-concepts-library/no-weights"] = Repo({"README.md": b"x", "token_identifier.txt": b"<x>"})
    hub.repos["sd-concepts-library/garbage"] = Repo({"learned_embeds.bin": b"<html>502 Bad Gateway</html>"})
    hub.repos["sd-concepts-library/evil"] = Repo(
        {"learned_embeds.bin": _torch_bytes({"<evil>": _RunsCode(tmp_path / "PWNED")})}
    )
    hub.repos["alice/secret-cat"] = Repo({"learned_embeds.bin": birb}, private=True)
    hub.repos["sd-concepts-library/gated-cat"] = Repo({"learned_embeds.bin": birb}, gated=True)
    return {
        "birb": torch.load(io.BytesIO(birb), weights_only=True)["<birb-style>"],
        "na": torch.load(na_dir / "na-tarapisu153.bin", weights_only=True)["<na-tarapisu153>"],
        "cat": torch.arange(768, dtype=torch.float32) / 100,
        "schemas": load_file(real_embeddings / "diffusers_detail-schemas_learned_embeds.safetensors"),
    }


def fetch(*args: str):
    return CliRunner().invoke(app, ["fetch", *args])


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _partial_downloads(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "hf-home").rglob("*") if p.name.endswith(".incomplete")]


# --- success -------------------------------------------------------------------------------------------------


def test_short_name_fetches_the_sd_concepts_repo(concepts, tmp_path):
    out = tmp_path / "emb"
    result = fetch("birb-style", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "token: <birb-style>" in result.stdout
    assert "type: style" in result.stdout
    assert (
        'textinv generate "a painting in the style of <birb-style>" --embedding birb-style' in result.stdout
    )
    assert _files(out) == ["birb-style.bin", "birb-style.concept.json"]
    saved = torch.load(out / "birb-style.bin", weights_only=True)
    assert list(saved) == ["<birb-style>"]
    assert torch.equal(saved["<birb-style>"], concepts["birb"])  # 1-D [768], as served
    side = json.loads((out / "birb-style.concept.json").read_text())
    hub_repo = parse_concept_name("birb-style")
    assert side["repo_id"] == hub_repo.repo_id == "sd-concepts-library/birb-style"
    assert side["concept_type"] == "style" and side["token"] == "<birb-style>"


def test_real_concept_folder_without_trailing_newlines(concepts, tmp_path):
    out = tmp_path / "emb"
    result = fetch("sd-concepts-library/na-tarapisu153", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["token"] == "<na-tarapisu153>" and got["concept_type"] == "style"
    assert got["example_prompt"] == "a painting in the style of <na-tarapisu153>"
    assert got["num_vectors"] == 1 and got["dim"] == 768 and got["family"] == "SD1.x"
    assert got["path"] == str(out / "na-tarapisu153.bin") and got["skipped"] is False
    saved = torch.load(out / "na-tarapisu153.bin", weights_only=True)
    assert torch.equal(saved["<na-tarapisu153>"], concepts["na"])


def test_token_identifier_names_the_token_not_the_file_key(concepts, tmp_path):
    out = tmp_path / "emb"
    result = fetch("cat-toy", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert 'example: textinv generate "a photo of <cat-toy>" --embedding cat-toy' in result.stdout
    saved = torch.load(out / "cat-toy.bin", weights_only=True)
    assert list(saved) == ["<cat-toy>"]
    assert torch.equal(saved["<cat-toy>"], concepts["cat"])


def test_any_repo_with_learned_embeds_safetensors_and_no_token_file(concepts, tmp_path, hub):
    out = tmp_path / "emb"
    result = fetch("ttekcor/detail-schemas", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "token: <detail-schemas>" in result.stdout  # the file's key
    assert "type: unknown" in result.stdout
    path = out / "ttekcor--detail-schemas.safetensors"
    saved = load_file(path)
    assert list(saved) == ["<detail-schemas>"]
    assert torch.equal(saved["<detail-schemas>"], concepts["schemas"]["<detail-schemas>"])
    # only what is needed was downloaded: not the README
    assert [p.rsplit("/", 1)[1] for p in hub.resolves()] == ["learned_embeds.safetensors"]
    assert find_local("ttekcor/detail-schemas", out) == path


def test_to_converts_and_keeps_token_and_type_as_metadata(concepts, tmp_path):
    out = tmp_path / "emb"
    result = fetch("birb-style", "--out", str(out), "--to", "safetensors")
    assert result.exit_code == 0, result.output
    saved = load_file(out / "birb-style.safetensors")
    assert torch.equal(saved["<birb-style>"], concepts["birb"].unsqueeze(0))
    with safe_open(out / "birb-style.safetensors", "pt") as f:
        meta = f.metadata()
    extra = json.loads(meta["textinv.extra"])
    assert extra["concept_type"] == "style" and extra["hub_repo"] == "sd-concepts-library/birb-style"
    # fetched again as .bin: the stale .safetensors (ours, per the sidecar) goes
    result = fetch("birb-style", "--out", str(out), "--to", "bin")
    assert result.exit_code == 0, result.output
    assert _files(out) == ["birb-style.bin", "birb-style.concept.json"]


def test_to_pt_writes_the_token_where_diffusers_reads_it(concepts, tmp_path):
    from textinv.formats.files import load_embedding

    out = tmp_path / "emb"
    result = fetch("cat-toy", "--out", str(out), "--to", "pt")
    assert result.exit_code == 0, result.output
    raw = torch.load(out / "cat-toy.pt", weights_only=True)
    assert raw["name"] == "<cat-toy>"  # diffusers' token for an A1111 .pt
    assert torch.equal(raw["string_to_param"]["*"], concepts["cat"].unsqueeze(0))
    emb = load_embedding(out / "cat-toy.pt")
    assert [t.name for t in emb.tokens] == ["<cat-toy>"]
    assert torch.equal(emb.tokens[0].vectors, concepts["cat"].unsqueeze(0))


def test_default_folder_and_find_local(concepts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = fetch("birb-style")
    assert result.exit_code == 0, result.output
    folder = Path("embeddings")
    assert find_local("birb-style", folder) == folder / "birb-style.bin"
    assert find_local("sd-concepts-library/birb-style", folder) == folder / "birb-style.bin"
    assert find_local("<birb-style>", folder) == folder / "birb-style.bin"  # by token
    assert find_local("cat-toy", folder) is None
    assert find_local("../etc", folder) is None
    assert find_local("birb-style", tmp_path / "nowhere") is None


def test_private_repo_with_hf_token(concepts, tmp_path, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    result = fetch("alice/secret-cat", "--out", str(tmp_path / "emb"))
    assert result.exit_code == 0, result.output
    saved = torch.load(tmp_path / "emb" / "alice--secret-cat.bin", weights_only=True)
    assert torch.equal(saved["<birb-style>"], concepts["birb"])
    assert all(h.get("authorization") == f"Bearer {GOOD_TOKEN}" for _, _, h in hub.log)


# --- re-fetch ------------------------------------------------------------------------------------------------


def test_refetch_is_skipped_until_the_hub_changes_or_force(concepts, tmp_path, hub):
    out = tmp_path / "emb"
    assert fetch("cat-toy", "--out", str(out)).exit_code == 0
    first = (out / "cat-toy.bin").stat().st_mtime_ns
    gets = len(hub.resolves())

    again = fetch("cat-toy", "--out", str(out))
    assert again.exit_code == 0, again.output
    assert "already in" in again.stdout and "unchanged on the hub" in again.stderr
    assert "token: <cat-toy>" in again.stdout
    assert len(hub.resolves()) == gets  # asked only whether the repo changed
    assert hub.log[-1][1] == "/api/models/sd-concepts-library/cat-toy"
    assert (out / "cat-toy.bin").stat().st_mtime_ns == first

    forced = fetch("cat-toy", "--out", str(out), "--force", "--json")
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["skipped"] is False
    files = ("learned_embeds.bin", "token_identifier.txt", "type_of_concept.txt")
    assert hub.resolves("GET")[-3:] == [f"/sd-concepts-library/cat-toy/resolve/main/{f}" for f in files]

    new = torch.full((768,), 0.5)
    hub.repos["sd-concepts-library/cat-toy"].files["learned_embeds.bin"] = _torch_bytes(
        {"<cat-toy-key>": new}
    )
    updated = fetch("cat-toy", "--out", str(out), "--json")
    assert updated.exit_code == 0, updated.output
    got = json.loads(updated.stdout)
    assert got["skipped"] is False and got["revision"] == hub.repos["sd-concepts-library/cat-toy"].sha
    assert torch.equal(torch.load(out / "cat-toy.bin", weights_only=True)["<cat-toy>"], new)


def test_a_file_not_fetched_by_textinv_is_not_overwritten(concepts, tmp_path):
    out = tmp_path / "emb"
    out.mkdir()
    (out / "birb-style.bin").write_bytes(b"mine")
    result = fetch("birb-style", "--out", str(out))
    assert result.exit_code == 1
    assert "already exists and was not fetched" in result.stderr and "--force" in result.stderr
    assert (out / "birb-style.bin").read_bytes() == b"mine"
    assert fetch("birb-style", "--out", str(out), "--force").exit_code == 0
    assert torch.equal(
        torch.load(out / "birb-style.bin", weights_only=True)["<birb-style>"], concepts["birb"]
    )


# --- offline and no network ----------------------------------------------------------------------------------


def test_offline_uses_the_cache(concepts, tmp_path, hub, monkeypatch):
    assert fetch("birb-style", "--out", str(tmp_path / "a")).exit_code == 0
    _go_offline(monkeypatch)
    requests = len(hub.log)
    result = fetch("birb-style", "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    assert "HF_HUB_OFFLINE is set: used the cached copy" in result.stderr
    assert "token: <birb-style>" in result.stdout and "type: style" in result.stdout
    assert len(hub.log) == requests  # not one request
    saved = torch.load(tmp_path / "b" / "birb-style.bin", weights_only=True)
    assert torch.equal(saved["<birb-style>"], concepts["birb"])

    again = fetch("birb-style", "--out", str(tmp_path / "a"), "--json")  # already there, same cached revision
    assert again.exit_code == 0, again.output
    got = json.loads(again.stdout)
    assert got["skipped"] is True and got["from_cache"] is True
    assert got["revision"] == hub.repos["sd-concepts-library/birb-style"].sha
    assert "the hub was not asked" in again.stderr and len(hub.log) == requests


def test_offline_without_cache(concepts, tmp_path, hub, monkeypatch):
    _go_offline(monkeypatch)
    result = fetch("birb-style", "--out", str(tmp_path / "emb"))
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: HF_HUB_OFFLINE is set and sd-concepts-library/birb-style is not in"
    )
    assert "unset HF_HUB_OFFLINE" in result.stderr
    assert hub.log == [] and not (tmp_path / "emb").exists()


def test_no_network_says_whether_a_cached_copy_exists(concepts, tmp_path, hub, monkeypatch):
    assert fetch("birb-style", "--out", str(tmp_path / "a")).exit_code == 0
    sha = hub.repos["sd-concepts-library/birb-style"].sha
    url = _dead_endpoint(monkeypatch)

    cached = fetch("birb-style", "--out", str(tmp_path / "b"))
    assert cached.exit_code == 1
    assert f"cannot reach the hub at {url}" in cached.stderr
    assert f"a cached copy of sd-concepts-library/birb-style exists (revision {sha[:7]})" in cached.stderr
    assert "rerun with HF_HUB_OFFLINE=1" in cached.stderr
    assert not (tmp_path / "b").exists()

    uncached = fetch("cat-toy", "--out", str(tmp_path / "b"))
    assert uncached.exit_code == 1
    assert "no cached copy of sd-concepts-library/cat-toy exists" in uncached.stderr


# --- faults --------------------------------------------------------------------------------------------------


def test_concept_that_does_not_exist(concepts, tmp_path, monkeypatch):
    result = fetch("no-such-concept", "--out", str(tmp_path / "emb"))
    assert result.exit_code == 1
    # anonymous: the hub answers 401 for missing and private repos alike, so the message covers both
    assert "sd-concepts-library/no-such-concept was not found on" in result.stderr
    assert "--search" in result.stderr and "HF_TOKEN" in result.stderr
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    result = fetch("no-such-concept", "--out", str(tmp_path / "emb"))
    assert result.exit_code == 1
    assert "error: no concept sd-concepts-library/no-such-concept on http://127.0.0.1" in result.stderr
    assert not (tmp_path / "emb").exists()


def test_repo_without_an_embedding_file(concepts, tmp_path):
    result = fetch("no-weights", "--out", str(tmp_path / "emb"))
    assert result.exit_code == 1
    assert "sd-concepts-library/no-weights holds no textual-inversion embedding" in result.stderr
    assert "it has README.md, token_identifier.txt" in result.stderr
    assert not (tmp_path / "emb").exists()


def test_private_repo_without_token(concepts, tmp_path):
    result = fetch("alice/secret-cat", "--out", str(tmp_path / "emb"))
    assert result.exit_code == 1
    assert (
        "alice/secret-cat was not found on" in result.stderr
        and "set HF_TOKEN if it is private" in result.stderr
    )
    assert not (tmp_path / "emb").exists()


def test_gated_repo(concepts, tmp_path, monkeypatch):
    result = fetch("gated-cat", "--out", str(tmp_path / "emb"))
    assert result.exit_code == 1
    assert "sd-concepts-library/gated-cat is gated: accept its terms at http://127.0.0.1" in result.stderr
    assert "set HF_TOKEN" in result.stderr
    monkeypatch.setenv("HF_TOKEN", "hf_other")
    result = fetch("gated-cat", "--out", str(tmp_path / "emb"))
    assert result.exit_code == 1
    assert "gated and your token has no access yet" in result.stderr
    assert not (tmp_path / "emb").exists()


def test_server_error(concepts, tmp_path, hub):
    hub.info_status = 500
    result = fetch("birb-style", "--out", str(tmp_path / "emb"))
    assert result.exit_code == 1
    assert "answered 500 (a server error) for sd-concepts-library/birb-style" in result.stderr
    assert "try again later" in result.stderr and "no cached copy" in result.stderr
    assert not (tmp_path / "emb").exists()


def test_server_error_during_download(concepts, tmp_path, hub):
    hub.get_status["learned_embeds.bin"] = 503
    result = fetch("birb-style", "--out", str(tmp_path / "emb"))
    assert result.exit_code == 1
    assert (
        result.stderr.startswith("error: the hub (http://127.0.0.1:")
        and "answered 503 (a server error) while downloading sd-concepts-library/birb-style/learned_embeds.bin;"
        in (result.stderr)
    )
    assert "no cached copy of sd-concepts-library/birb-style exists" in result.stderr
    assert not (tmp_path / "emb").exists() and _partial_downloads(tmp_path) == []


def test_connection_dropped_mid_download(concepts, tmp_path, hub):
    hub.drops["learned_embeds.bin"] = 100  # every try: huggingface_hub resumes 5 times, then gives up
    result = fetch("birb-style", "--out", str(tmp_path / "emb"))
    assert result.exit_code == 1
    assert "connection to http://127.0.0.1" in result.stderr
    assert "dropped while downloading sd-concepts-library/birb-style/learned_embeds.bin" in result.stderr
    assert "nothing was saved" in result.stderr
    assert not (tmp_path / "emb").exists() and _partial_downloads(tmp_path) == []
    assert hub.drops["learned_embeds.bin"] == 100 - 6


def test_connection_dropped_once_is_retried(concepts, tmp_path, hub):
    hub.drops["learned_embeds.bin"] = 1
    result = fetch("birb-style", "--out", str(tmp_path / "emb"))
    assert result.exit_code == 0, result.output
    # huggingface_hub retried the GET; it asked for the whole file again (no Range) because its 10 MB read chunk
    # never completed, so it had kept none of the half it received
    ranges = [h.get("range") for m, p, h in hub.log if m == "GET" and p.endswith("learned_embeds.bin")]
    assert ranges == [None, None]
    saved = torch.load(tmp_path / "emb" / "birb-style.bin", weights_only=True)
    assert torch.equal(saved["<birb-style>"], concepts["birb"])


def test_not_an_embedding(concepts, tmp_path):
    result = fetch("garbage", "--out", str(tmp_path / "emb"))
    assert result.exit_code == 1
    assert "sd-concepts-library/garbage/learned_embeds.bin is not a usable embedding" in result.stderr
    assert "nothing was saved" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "emb").exists()


def test_pickle_that_runs_code_is_refused(concepts, tmp_path):
    result = fetch("evil", "--out", str(tmp_path / "emb"))
    assert result.exit_code == 1
    assert "sd-concepts-library/evil/learned_embeds.bin is not a usable embedding" in result.stderr
    assert "system" in result.stderr  # names what it refused to call
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "emb").exists()


@pytest.mark.parametrize(
    "name", ["../x", "/etc/passwd", "~/x", "a/b/c", "..", "sd-concepts-library/../x", "..\\x", "./x"]
)
def test_names_that_would_write_outside_the_folder(hub, tmp_path, name):
    result = fetch(name, "--out", str(tmp_path / "emb"))
    assert result.exit_code == 1
    assert "would write outside the embeddings folder" in result.stderr
    assert hub.log == [] and _files(tmp_path / "emb") == []


@pytest.mark.parametrize("name", ["cat toy", "<cat-toy>", "-x", "a--b", ""])
def test_names_the_hub_cannot_have(hub, tmp_path, name):
    result = fetch(name, "--out", str(tmp_path / "emb")) if name != "-x" else fetch("--out", "o", "--", name)
    assert result.exit_code == 1
    assert "is not a concept name or hub repo id" in result.stderr
    assert hub.log == []


def test_parse_concept_name():
    assert parse_concept_name("cat-toy").repo_id == "sd-concepts-library/cat-toy"
    assert parse_concept_name("sd-concepts-library/cat-toy").local_name == "cat-toy"
    assert parse_concept_name("someone/cat_toy.v2").local_name == "someone--cat_toy.v2"
    with pytest.raises(ConceptError, match="outside the embeddings folder"):
        parse_concept_name("../../x")


def test_usage():
    assert fetch().exit_code == 2
    assert fetch("cat-toy", "--search", "cat").exit_code == 2
    result = fetch("--help")
    assert (
        result.exit_code == 0
        and "--search" in result.stdout
        and "Example: textinv fetch cat-toy" in result.stdout
    )


# --- search --------------------------------------------------------------------------------------------------


def test_search_table(concepts):
    result = fetch("--search", "cat", "--limit", "2")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.strip().splitlines()]
    assert lines == [  # most downloaded first; black-cat has no token_identifier.txt
        ["name", "token", "type", "likes", "downloads"],
        ["cat-toy", "<cat-toy>", "object", "30", "5000"],
        ["black-cat", "(file", "key)", "object", "1", "3"],
    ]


def test_search_json(concepts):
    result = fetch("--search", "CAT", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got == [
        {
            "name": "cat-toy",
            "repo_id": "sd-concepts-library/cat-toy",
            "token": "<cat-toy>",
            "concept_type": "object",
            "likes": 30,
            "downloads": 5000,
        },
        {
            "name": "black-cat",
            "repo_id": "sd-concepts-library/black-cat",
            "token": None,  # no token_identifier.txt: the token is the file's key, known once fetched
            "concept_type": "object",
            "likes": 1,
            "downloads": 3,
        },
        {
            "name": "gated-cat",
            "repo_id": "sd-concepts-library/gated-cat",
            "token": None,  # gated: its files cannot be read without a token
            "concept_type": None,
            "likes": 0,
            "downloads": 0,
        },
    ]


def test_search_offline(hub, monkeypatch):
    _go_offline(monkeypatch)
    result = fetch("--search", "cat")
    assert result.exit_code == 1 and "searching needs the hub, and HF_HUB_OFFLINE is set" in result.stderr
    assert hub.log == []


def test_unpicklable_marker_is_a_real_exploit(tmp_path):
    """Guard for the test above: the served file really would run code under a plain pickle load."""
    data = _torch_bytes({"<evil>": _RunsCode(tmp_path / "PWNED")})
    with pytest.raises(pickle.UnpicklingError):
        torch.load(io.BytesIO(data), weights_only=True)


def test_search_without_a_network_fails_at_once_in_one_line(hub, monkeypatch):
    _dead_endpoint(monkeypatch)
    result = fetch("--search", "cat")
    assert result.exit_code == 1
    assert "cannot reach the hub" in result.stderr and "Retrying" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_fetch_reports_the_download_through_a_reporter(concepts, tmp_path):
    from textinv.concepts.fetch import fetch_concept
    from textinv.reporting import Reporter

    calls: list[tuple] = []

    class Recorder(Reporter):
        def start(self, task, total, *, done=0, note=""):
            calls.append(("start", task, total))

        def advance(self, task, done, **values):
            calls.append(("advance", task, done))

        def finish(self, task):
            calls.append(("finish", task))

    fetch_concept("birb-style", out_dir=tmp_path / "emb", reporter=Recorder())
    starts = [c for c in calls if c[0] == "start"]
    assert starts and all(c[1] == "download" for c in starts)
    total = starts[0][2]  # the embedding file, in bytes, counted up to its size
    assert total > 1000 and ("advance", "download", total) in calls
    assert calls[-1] == ("finish", "download")
