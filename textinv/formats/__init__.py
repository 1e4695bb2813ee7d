"""Embedding file formats: one `Format` record per layout (`record.py`), one module per family (`a1111`,
`paper`, `png`, `diffusers`, `kohya`, `sdxl`), the bounded container reader (`container.py`) and the registry
that reads and writes with them (`registry.py`).

This module holds only the names the command line offers and the file endings embeddings come in, so that
importing it (for `--to`/`--for` choices) needs no torch; the registry checks at import that each name has its
record.
"""

# The writable formats, in the order the README and `--to` list them.
WRITE_NAMES = ("a1111-pt", "paper-pt", "diffusers-bin", "diffusers-safetensors", "kohya", "a1111-png",
               "sd-concepts-folder")
# Shorthands named after file extensions; `pt` with several tokens is the paper layout, the only one whose
# readers keep them all.
SHORTHANDS = {"pt": "a1111-pt", "bin": "diffusers-bin", "safetensors": "diffusers-safetensors", "png": "a1111-png"}
# The endings of embedding files, one per shorthand: what `--embedding DIR` takes from a folder ...
EMBEDDING_SUFFIXES = tuple(f".{s}" for s in SHORTHANDS)
# ... and those that hold tensors rather than a picture, safest first: what a concept's repo or folder holds.
TENSOR_SUFFIXES = (".safetensors", ".bin", ".pt")
# The tools people load embeddings into (the names `--for` takes), and the format each one gets.
TOOLS = {
    "a1111": "AUTOMATIC1111 webui",
    "invokeai": "InvokeAI",
    "comfyui": "ComfyUI",
    "kohya": "kohya-ss gen_img.py",
    "diffusers": "diffusers load_textual_inversion",
    "sd-concepts": "sd-concepts-library folder",
}
FOR_TOOL = {
    "a1111": "a1111-pt",
    "invokeai": "a1111-pt",
    "comfyui": "diffusers-safetensors",
    "kohya": "kohya",
    "diffusers": "diffusers-safetensors",
    "sd-concepts": "sd-concepts-folder",
}
# The tools that take the token from inside the file and refuse one their tokenizer already has (`*`): `--for` them
# writes such a placeholder as `<stem>` (formats.consumers.diffusers_token).
RENAMED_FOR = ("diffusers", "sd-concepts")
