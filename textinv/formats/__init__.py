"""Embedding file formats: one `Format` record per layout (`record.py`), one module per family (`a1111`,
`paper`, `png`, `diffusers`, `kohya`, `sdxl`, `onetrainer`, `comfyui`), the bounded container reader
(`container.py`) and the registry that reads and writes with them (`registry.py`).

This module holds only the names the command line offers and the file endings embeddings come in, so that
importing it (for `--to`/`--for` choices) needs no torch; the registry checks at import that each name has its
record.
"""

# The writable formats, in the order the README and `--to` list them.
WRITE_NAMES = ("a1111-pt", "paper-pt", "diffusers-bin", "diffusers-safetensors", "kohya", "a1111-png",
               "sd-concepts-folder", "onetrainer", "comfyui-t5")
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
    "onetrainer": "OneTrainer",
}
FOR_TOOL = {
    "a1111": "a1111-pt",
    "invokeai": "a1111-pt",
    "comfyui": "diffusers-safetensors",
    "kohya": "kohya",
    "diffusers": "diffusers-safetensors",
    "sd-concepts": "sd-concepts-folder",
    "onetrainer": "onetrainer",
}
# SD3 and Flux.1 embeddings (a T5-XXL part beside the CLIP ones), tool by tool: (the layout `--for TOOL` writes, what
# the tool then loads), or why it cannot load one, so that `--for` refuses rather than write a file the tool would
# misread. Read from (tool, version, file:line):
# - OneTrainer 23df383 modules/modelSetup/BaseStableDiffusion3Setup.py:98-100 and BaseFluxSetup.py:86-87: the keys
#   clip_l, clip_g, t5 (SD3) and clip_l, t5 (Flux.1).
# - ComfyUI a125cd8 comfy/sd1_clip.py:451-452 (`embed[embed_key]`), comfy/text_encoders/sd3_clip.py:37 and
#   flux.py:12 (the T5 tokenizers' `embedding_key='t5xxl'`).
# - AUTOMATIC1111 v1.10.1 modules/models/sd3/sd3_cond.py:56-95 (Sd3ClipLG: the two CLIPs take embeddings, read as
#   SDXL's {clip_l, clip_g} by modules/textual_inversion/textual_inversion.py:296-299) and :97-154 (Sd3T5: its own
#   T5 tokenizer, no embeddings); it has no Flux.1.
# - diffusers 0.42.1 src/diffusers/pipelines/stable_diffusion_3/pipeline_stable_diffusion_3.py:148 (no
#   TextualInversionLoaderMixin), pipelines/flux/pipeline_flux.py:146-152 (FluxPipeline has it: one encoder per
#   call, examples/advanced_diffusion_training/README_flux.md:314-316 at 58eb52c: clip_l, then t5 into text_encoder_2).
# - InvokeAI 8e71a8a invokeai/backend/model_manager/configs/textual_inversion.py:54 (a file with clip_g is an
#   embedding) and :79-93 (its width from clip_g; 768, 1024, 1280 only).
# - kohya-ss sd-scripts 48d368f gen_img.py:2089-2127 (SD1.x/SD2.x: the first tensor; SDXL: clip_l, clip_g; no SD3 or
#   Flux.1 branch).
# - Forge dfdcbab backend/text_processing/t5_engine.py:19-158 (T5TextProcessingEngine has no embeddings, unlike
#   classic_engine.py:24-33; forge #2101).
T5_TOOLS: dict[str, dict[str, tuple[str, str] | str]] = {
    "SD3": {
        "onetrainer": ("onetrainer", "clip_l, clip_g and t5"),
        "comfyui": ("comfyui-t5", "clip_l, clip_g and t5xxl"),
        "a1111": ("a1111-pt", "clip_l and clip_g (AUTOMATIC1111 1.10 and later); its T5 takes no embedding"),
        "diffusers": "diffusers' StableDiffusion3Pipeline has no textual-inversion loader (textinv generate loads it)",
        "invokeai": "InvokeAI's probe takes any file with clip_g for SDXL (invokeai/backend/model_manager/configs/"
                    "textual_inversion.py), so it would load this one into SDXL models",
        "kohya": "kohya-ss gen_img.py loads textual inversions for SD1.x, SD2.x and SDXL only",
        "sd-concepts": "an sd-concepts folder holds one CLIP encoder's vectors",
    },
    "Flux.1": {
        "onetrainer": ("onetrainer", "clip_l and t5"),
        "comfyui": ("comfyui-t5", "clip_l and t5xxl"),
        "diffusers": ("onetrainer", "clip_l into text_encoder and t5 into text_encoder_2, one "
                      "load_textual_inversion call each (printed)"),
        "a1111": "AUTOMATIC1111 does not run Flux.1",
        "invokeai": "InvokeAI's probe knows 768, 1024 and 1280-dim embeddings only (invokeai/backend/model_manager/"
                    "configs/textual_inversion.py)",
        "kohya": "kohya-ss gen_img.py loads textual inversions for SD1.x, SD2.x and SDXL only",
        "sd-concepts": "an sd-concepts folder holds one CLIP encoder's vectors",
    },
}
# The word that triggers an SD3/Flux.1 embedding in each tool that loads one ({stem}: the file's, {token}: ours).
T5_TRIGGERS = {"onetrainer": "{token}", "comfyui": "embedding:{stem}", "a1111": "{stem}", "diffusers": "{dtoken}"}
# The tools that take the token from inside the file and refuse one their tokenizer already has (`*`): `--for` them
# writes such a placeholder as `<stem>` (formats.consumers.diffusers_token).
RENAMED_FOR = ("diffusers", "sd-concepts")
