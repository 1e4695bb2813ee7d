"""The record every format is: its name, how it is recognised, how it is read and written, and who loads it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from textinv.formats import T5_TOOLS, T5_TRIGGERS
from textinv.formats.common import Source
from textinv.formats.embedding import Embedding


class Conditional(NamedTuple):
    """A tool that loads a layout only sometimes: its trigger word, the condition in words, and a test of it."""

    trigger: str
    condition: str
    holds: Callable[[Embedding], bool]


@dataclass(frozen=True)
class Format:
    """One layout of an embedding file.

    `recognise(data, metadata, source)` says whether what a container held is this layout; `read` builds the
    Embedding from it; `write(emb, path)` writes one (None: a layout textinv reads but does not write).
    `loads_in` maps each tool that loads what `write` writes to the word that triggers it there, with `{stem}`
    for the file's stem and `{token}` for the placeholder; `loads_if` lists the tools that load it only under a
    condition (one vector, a keyword argument).
    """

    name: str
    description: str
    recognise: Callable[[object, dict, Source], bool]
    read: Callable[[object, dict, Source], Embedding]
    write: Callable[[Embedding, Path], None] | None = None
    extension: str = ""
    loads_in: dict[str, str] = field(default_factory=dict)
    loads_if: dict[str, Conditional] = field(default_factory=dict)

    def triggers(self, path: Path, emb: Embedding) -> dict[str, str]:
        """tool -> the word that triggers `emb` once written to `path` in this layout, for each tool that loads it.
        An SD3 or Flux.1 embedding loads in the tools `formats.T5_TOOLS` names for this layout, whatever the rest
        of the record says of CLIP-only files."""
        if emb.architecture is not None:
            tools = T5_TOOLS[emb.architecture]
            words = {tool: T5_TRIGGERS[tool] for tool, entry in tools.items()
                     if isinstance(entry, tuple) and entry[0] == self.name}
        else:
            words = dict(self.loads_in)
            words.update({tool: c.trigger for tool, c in self.loads_if.items() if c.holds(emb)})
        return {tool: w.format(stem=path.stem, token=emb.tokens[0].name) for tool, w in words.items()}
