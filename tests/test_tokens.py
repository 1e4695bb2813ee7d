"""The one rule for where a placeholder stands as a prompt word, as every user of it sees it: training prompts
(`fill_prompt`, captions), the vector-token expansion, and the warning for placeholder-like words not loaded."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from textinv.models.embeddings import check_prompt
from textinv.models.tokens import as_word, expand_placeholders
from textinv.training.data import fill_prompt

WORDS = [  # (prompt, does `*` stand in it as a word)
    ("*", True),
    ("a photo of *", True),
    ("* on a sofa", True),
    ("a photo of *, on a sofa", True),
    ("a photo of *.", True),
    ("is it *? yes; *: no!", True),
    ("a\t*\nb", True),
    ("a*b", False),
    ("a photo of *x", False),
    ("a photo of x*", False),
    ("a photo of (*)", False),
    ("**", False),
    ("", False),
]


@pytest.mark.parametrize(("prompt", "named"), WORDS)
def test_a_placeholder_is_a_word_after_a_space_and_before_a_space_punctuation_or_the_end(prompt, named):
    assert bool(re.search(as_word(r"\*"), prompt)) is named
    assert (fill_prompt(prompt, "<t>") != prompt) is named
    assert (expand_placeholders(prompt, {"*": "<t-0> <t-1>"}) != prompt) is named
    assert bool(check_prompt(SimpleNamespace(), prompt)) is named


def test_as_word_keeps_the_groups_of_its_pattern():
    pattern = as_word("(<cat>|<dog>)")
    assert [m.group(1) for m in re.finditer(pattern, "<cat>, <dog> <cat>s x<dog>")] == ["<cat>", "<dog>"]
    assert expand_placeholders("<cat>, <cat>s", {"<cat>": "<c0> <c1>"}) == "<c0> <c1>, <cat>s"
