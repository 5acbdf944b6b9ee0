"""Detector weight resolution: cache location, verified downloads, offline errors, random-init switch."""

import hashlib
from pathlib import Path

import pytest

from edm2lib.metrics import WEIGHTS, cache_dir, load_detector, resolve_weights
from edm2lib.metrics.weights import WeightsSpec, download


@pytest.fixture
def served(tmp_path):
    """A 3 MiB 'weights' file reachable through a file:// URL, and its sha256."""
    src = tmp_path / "server" / "weights.pth"
    src.parent.mkdir()
    src.write_bytes(bytes(range(256)) * (3 * 4096))
    return src.as_uri(), hashlib.sha256(src.read_bytes()).hexdigest()


def test_cache_dir_prefers_edm2lib_cache_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("EDM2LIB_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("EDM2LIB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "edm2lib"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "edm2lib"


def test_download_with_matching_checksum_lands_at_destination(served, tmp_path):
    url, sha = served
    dest = download(url, tmp_path / "cache" / "w.pth", sha, progress=False)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha
    assert [p.name for p in dest.parent.iterdir()] == ["w.pth"]


def test_download_with_wrong_checksum_is_deleted_and_raises(served, tmp_path):
    url, sha = served
    dest = tmp_path / "cache" / "w.pth"
    with pytest.raises(ValueError, match=f"has sha256 {sha}, expected 0000.*deleted"):
        download(url, dest, "0" * 64, progress=False)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no temporary file left behind either


def test_missing_weights_download_into_the_cache_and_are_reused(served, tmp_path, monkeypatch):
    url, sha = served
    monkeypatch.setenv("EDM2LIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(WEIGHTS, "inception", WeightsSpec("w.pth", url, sha))
    path, got = resolve_weights("inception")
    assert path == tmp_path / "cache" / "w.pth" and got == sha
    Path(url.removeprefix("file://")).unlink()  # second call must not need the server
    assert resolve_weights("inception") == (path, sha)


def test_offline_missing_weights_error_names_file_url_and_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv("EDM2LIB_CACHE", str(tmp_path / "cache"))
    spec = WEIGHTS["dinov2"]
    monkeypatch.setitem(WEIGHTS, "dinov2", WeightsSpec(spec.filename, (tmp_path / "nowhere").as_uri(), None))
    with pytest.raises(FileNotFoundError) as err:
        resolve_weights("dinov2")
    text = str(err.value)
    assert "dinov2_vitl14_pretrain.pth" in text and (tmp_path / "nowhere").as_uri() in text
    assert str(tmp_path / "cache" / "dinov2_vitl14_pretrain.pth") in text and "download failed" in text
    assert "\n" not in text


def test_offline_switch_skips_download_and_names_the_real_url(tmp_path, monkeypatch):
    monkeypatch.setenv("EDM2LIB_CACHE", str(tmp_path))
    monkeypatch.setenv("EDM2LIB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="downloads are disabled") as err:
        resolve_weights("inception")
    assert WEIGHTS["inception"].url in str(err.value)
    assert str(tmp_path / "pt_inception-2015-12-05-6726825d.pth") in str(err.value)


def test_cached_file_with_wrong_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EDM2LIB_CACHE", str(tmp_path))
    (tmp_path / WEIGHTS["inception"].filename).write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="does not match the published"):
        resolve_weights("inception")


def test_random_init_only_with_the_explicit_switch(tmp_path, monkeypatch):
    monkeypatch.setenv("EDM2LIB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"dinov2_vitl14_pretrain\.pth"):
        load_detector("dinov2", download=False)
    with pytest.raises(ValueError, match="random-init tests only"):
        load_detector("dinov2", download=False, depth=1)
    with pytest.raises(
        FileNotFoundError, match=r"missing\.pth"
    ):  # an explicit path must exist, switch or not
        load_detector("dinov2", weights=tmp_path / "missing.pth", allow_random=True)
    det = load_detector("dinov2", allow_random=True, download=False, embed_dim=16, depth=1, num_heads=1)
    assert det.identity["weights"].startswith("random-init") and det.identity["sha256"].startswith(
        "random-init"
    )


def test_unknown_detector_name_is_rejected():
    with pytest.raises(ValueError, match="unknown detector 'clip'"):
        load_detector("clip", allow_random=True)
