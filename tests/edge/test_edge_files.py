"""The atomic writers: the target holds the whole new content, and no temporary file is left behind."""

from __future__ import annotations

import json

import pytest

from edge.files import write_bytes_atomic, write_json_atomic


def test_write_json_atomic_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"b": [1, 2]}, sort_keys=True)
    assert json.loads(target.read_text()) == {"b": [1, 2]}
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.json"
    write_bytes_atomic(target, b"old")
    with pytest.raises(TypeError):
        write_json_atomic(target, {"x": object()})  # not JSON: fails before anything is written
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
