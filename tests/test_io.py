"""Atomic writes: all or nothing, and the file gets the mode a plain write would give it."""

import os
import stat

import pytest

from edgeprune._io import atomic_path, write_json


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_a_new_file_gets_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        p = write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert _mode(p) == 0o644 and p.read_text() == '{\n  "x": 1\n}\n'


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the umask from Linux's /proc")
def test_the_umask_is_read_without_setting_it(tmp_path, monkeypatch):
    # setting the umask to read it would briefly change the mode of files other threads create
    old = os.umask(0o027)
    try:
        def refuse(mask):
            raise AssertionError("os.umask called while writing")

        monkeypatch.setattr(os, "umask", refuse)
        p = write_json(tmp_path / "c.json", {})
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert _mode(p) == 0o640


def test_an_existing_file_keeps_its_mode(tmp_path):
    p = tmp_path / "b.json"
    p.write_text("{}")
    p.chmod(0o600)
    write_json(p, [1])
    assert _mode(p) == 0o600 and p.read_text() == "[\n  1\n]\n"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert p.read_text() == "old" and sorted(x.name for x in tmp_path.iterdir()) == ["c.txt"]
