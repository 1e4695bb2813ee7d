"""YAML read as `yaml.safe_load` reads it, except that a key given twice in one mapping is an error naming the key,
its lines and the file: PyYAML silently keeps the last, so an edit to the first one would do nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from textinv.errors import ConfigError


def load(text: str, p: Path) -> Any:
    """The YAML document `text` (read from `p`), as `yaml.safe_load` gives it; ConfigError for a duplicate key."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, p, (), set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _refuse_duplicate_keys(node: yaml.Node, p: Path, where: tuple[str, ...], seen: set[int]) -> None:
    if id(node) in seen:  # an alias of a node already checked (and a way out of a self-referencing one)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                name, line = ".".join((*where, key.value)), key.start_mark.line + 1
                if (key.tag, key.value) in lines:
                    raise ConfigError(f"{p}: `{name}` is given twice (lines {lines[key.tag, key.value]} and {line}); "
                                      "keep one")
                lines[key.tag, key.value] = line
            _refuse_duplicate_keys(value, p, (*where, str(key.value)), seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, p, where, seen)
