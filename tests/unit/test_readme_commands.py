"""The helper that pulls a fenced block's commands out of README.md (tests/e2e/readme_commands.py),
and the README's stand-alone block itself: present once, one command per line, every recipe it
names shipped in recipes/ (the slow tests/e2e/test_readme_path.py runs the block)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.readme_commands import commands, fenced_block, readme_commands
from tests.e2e.test_readme_path import MARKER

REPO = Path(__file__).resolve().parents[2]


def test_commands_join_continuations_and_skip_comments_and_blanks():
    block = ["# a comment", "", "rlp sft a.yaml \\", "    --run-dir runs/x   # trailing", "echo done"]
    assert commands(block) == ["rlp sft a.yaml --run-dir runs/x   # trailing", "echo done"]


def test_fenced_block_needs_the_marker_once_and_a_closed_fence():
    text = "intro\n<!-- m -->\n```bash\nrlp demo\n```\nafter\n"
    assert fenced_block(text, "<!-- m -->") == ["rlp demo"]
    with pytest.raises(ValueError, match="found it 0 times"):
        fenced_block(text, "<!-- other -->")
    with pytest.raises(ValueError, match="never closed"):
        fenced_block("<!-- m -->\n```bash\nrlp demo\n", "<!-- m -->")
    with pytest.raises(ValueError, match="not an opening"):
        fenced_block("<!-- m -->\nrlp demo\n", "<!-- m -->")


def test_readme_stand_alone_block_names_only_shipped_recipes():
    block = readme_commands(MARKER)
    assert any(c.startswith("rlp distill") for c in block) and any("grpo_tools_tiny" in c for c in block)
    for recipe in re.findall(r"recipes/\S+\.yaml", " ".join(block)):
        assert (REPO / recipe).is_file(), recipe
