"""The record every format is: its name, how it is recognised, how it is read and written, and who loads it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from textinv.formats.common import Source
from textinv.formats.consumers import Conditional, Usage, diffusers_token, invokeai_can_trigger, t5_usage
from textinv.formats.embedding import Embedding


@dataclass(frozen=True)
class Format:
    """One layout of an embedding file.

    `recognise(data, metadata, source)` says whether what a container held is this layout; `read` builds the
    Embedding from it; `write(emb, path)` writes one (None: a layout textinv reads but does not write).
    `loads_in` maps each tool that loads what `write` writes to the word that triggers it there, with `{stem}`
    for the file's stem, `{token}` for the placeholder, `{dtoken}` for the token diffusers takes
    (`consumers.diffusers_token`) and `{file}` for the file's name; `loads_if` lists the tools that load it only
    under a condition (one vector, an SDXL file), each with one Conditional or several (the first that holds
    applies).
    """

    name: str
    description: str
    recognise: Callable[[object, dict, Source], bool]
    read: Callable[[object, dict, Source], Embedding]
    write: Callable[[Embedding, Path], None] | None = None
    extension: str = ""
    loads_in: dict[str, str] = field(default_factory=dict)
    loads_if: dict[str, Conditional | tuple[Conditional, ...]] = field(default_factory=dict)

    def conditions(self, tool: str) -> tuple[Conditional, ...]:
        found = self.loads_if.get(tool, ())
        return (found,) if isinstance(found, Conditional) else found

    def usage(self, path: Path, emb: Embedding) -> dict[str, Usage]:
        """tool -> how `emb`, once written to `path` in this layout, is triggered there (and any step first), for
        each tool that loads it."""
        if emb.architecture is not None:  # SD3, Flux.1: the tools `formats.T5_TOOLS` names for this layout, whatever
            found = t5_usage(self.name, emb.architecture)  # the rest of the record says of CLIP-only files
        else:
            found = {tool: Usage(word) for tool, word in self.loads_in.items()}
            for tool in self.loads_if:
                held = next((c for c in self.conditions(tool) if c.holds(emb)), None)
                if held is not None:
                    found[tool] = Usage(held.trigger, held.step)
        if "invokeai" in found and not invokeai_can_trigger(path):
            del found["invokeai"]  # its prompt parser cannot match `<stem>` (see consumers.INVOKEAI_NAME)
        names = dict(stem=path.stem, token=emb.tokens[0].name, dtoken=diffusers_token(emb, path), file=path.name)
        return {tool: Usage(u.trigger.format(**names), u.step.format(**names)) for tool, u in found.items()}

    def triggers(self, path: Path, emb: Embedding) -> dict[str, str]:
        """tool -> the word that triggers `emb` once written to `path` in this layout, for each tool that loads it."""
        return {tool: u.trigger for tool, u in self.usage(path, emb).items()}
