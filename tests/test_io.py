"""Atomic writes and the safetensors metadata format."""

import os

import pytest
import torch

from edm2lib import files


def test_atomic_path_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed")
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_atomic_path_keeps_suffix_and_renames(tmp_path):
    target = tmp_path / "sub" / "x.npz"
    with files.atomic_path(target) as tmp:
        assert tmp.name.endswith(".npz") and tmp.parent == target.parent
        tmp.write_bytes(b"abc")
    assert target.read_bytes() == b"abc"
    assert files.sha256_file(target) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_atomic_dir_refuses_existing_and_cleans_up(tmp_path):
    with pytest.raises(ValueError), files.atomic_dir(tmp_path / "ckpt") as d:
        (d / "a.txt").write_text("x")
        raise ValueError
    assert list(tmp_path.iterdir()) == []
    with files.atomic_dir(tmp_path / "ckpt") as d:
        (d / "a.txt").write_text("x")
    assert (tmp_path / "ckpt" / "a.txt").read_text() == "x"
    with pytest.raises(FileExistsError), files.atomic_dir(tmp_path / "ckpt"):
        pass


def test_tensors_and_metadata_round_trip(tmp_path):
    path = tmp_path / "t.safetensors"
    files.save_tensors(path, {"w": torch.arange(6.0).view(2, 3)}, {"nimg": 1 << 40, "sigma_rel": 0.05})
    assert files.read_meta(path) == {"nimg": 1 << 40, "sigma_rel": 0.05}
    with pytest.raises(ValueError, match="not a network file"):
        files.read_network_meta(path)


def test_read_meta_names_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors"):
        files.read_meta(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(ValueError, match=r"junk\.safetensors"):
        files.read_meta(junk)


def test_atomic_outputs_get_the_umask_mode_not_the_tempfile_mode(tmp_path):
    old = os.umask(0o022)
    try:
        with files.atomic_path(tmp_path / "f.bin") as tmp:
            tmp.write_bytes(b"x")
        with files.atomic_dir(tmp_path / "d"):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_file_name_patterns_round_trip():
    assert files.snapshot_name(131072, 0.05) == "snapshot-000000131072-0.050.safetensors"
    assert files.phema_name(2147483648, 0.1) == "phema-002147483648-0.100.safetensors"
    assert files.is_snapshot_name(files.snapshot_name(1024, 0.1))
    assert files.is_snapshot_name("network-snapshot-0134217-0.100.safetensors")
    assert not files.is_snapshot_name(files.phema_name(1024, 0.1))
    assert not files.is_snapshot_name("snapshot-000000001024-0.100.pkl")
    assert files.checkpoint_name(16) == "ckpt-000000000016"
    assert files.parse_checkpoint_name(files.checkpoint_name(16)) == 16
    assert files.parse_checkpoint_name("ckpt-16") is None
    assert files.point_name(131072, 0.1, "ag") == "000000131072-0.100-ag"
    assert files.parse_point_name(files.point_name(131072, 0.1, "ag")) == (131072, 0.1, "ag")
    assert files.parse_point_name("000000131072-0.1-ag") is None
    assert files.parse_official_name("network-snapshot-2147483-0.135.pkl") == (2147483, 0.135)
    assert files.parse_official_name("model.pkl") is None
