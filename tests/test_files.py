"""lrpgraph.files.atomic_write: all or nothing, the old file kept on failure, usual permissions."""

import os

import pytest

from lrpgraph.files import atomic_write


@pytest.mark.parametrize("durable", [False, True])
def test_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path, durable):
    target = tmp_path / "sub" / "out.bin"
    atomic_write(target, lambda f: f.write(b"old"), durable=durable)

    def half_then_fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail, durable=durable)
    assert target.read_bytes() == b"old"
    assert os.listdir(target.parent) == ["out.bin"]


def test_text_mode_and_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "a.txt", lambda f: f.write("grüße"), binary=False)
    finally:
        os.umask(old)
    assert open(path, encoding="utf-8").read() == "grüße"
    assert os.stat(path).st_mode & 0o777 == 0o644  # 0o666 minus the umask, not mkstemp's 0o600
