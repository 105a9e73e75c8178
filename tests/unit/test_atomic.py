"""rl_pipeline.atomic: after a write the final name holds the whole new content; a writer that
raises leaves the old content and no temp file or folder behind."""

from __future__ import annotations

import pytest

from rl_pipeline.atomic import atomic_folder, atomic_output, atomic_write_bytes, atomic_write_text, temp_name


class WriterFailed(Exception):
    """The fault these tests inject on purpose: a writer that dies half-way."""


def test_text_replaces_the_old_content_completely(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old content that is longer than the new one")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_bytes_and_a_leftover_temp_of_a_killed_writer(tmp_path):
    path = tmp_path / "blob.bin"
    temp_name(path).write_bytes(b"half of an older wri")  # what a SIGKILL mid-write leaves
    atomic_write_bytes(path, bytes(range(256)) * 1000)
    assert path.read_bytes() == bytes(range(256)) * 1000
    assert not temp_name(path).exists()


def test_a_writer_that_raises_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n')
    with pytest.raises(WriterFailed), atomic_output(path) as tmp:
        with tmp.open("w") as f:
            f.write('{"step": 1}\n{"st')
        raise WriterFailed
    assert path.read_text() == '{"step": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_nothing_appears_when_the_first_write_fails(tmp_path):
    with pytest.raises(WriterFailed), atomic_output(tmp_path / "new.txt") as tmp:
        tmp.write_text("partial")
        raise WriterFailed
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_swapped_in_whole(tmp_path):
    final = tmp_path / "final_model"
    final.mkdir()
    (final / "stale.bin").write_text("from the last save")
    with atomic_folder(final) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights.bin").write_bytes(b"\x01" * 4096)
        (tmp / "config.json").write_text("{}")
        assert not (final / "config.json").exists()  # nothing visible under the final name yet
    assert sorted(str(p.relative_to(final)) for p in final.rglob("*")) == ["config.json", "sub", "sub/weights.bin"]
    assert (final / "sub" / "weights.bin").read_bytes() == b"\x01" * 4096
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final_model"]


def test_a_folder_writer_that_raises_keeps_the_old_folder(tmp_path):
    final = tmp_path / "checkpoint"
    final.mkdir()
    (final / "state.json").write_text("complete")
    with pytest.raises(WriterFailed), atomic_folder(final) as tmp:
        (tmp / "state.json").write_text("half")
        raise WriterFailed
    assert (final / "state.json").read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
