"""Released-model support: registry and URLs, the resumable checksummed fetcher, published reference stats,
the official configs, and the paper column. Nothing here touches the network: a local HTTP server on
127.0.0.1 stands in for the CDN."""

import http.server
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from edm2lib.metrics.stats import load_stats
from edm2lib.official import paper, releases
from edm2lib.official.convert import convert
from edm2lib.official.download import FetchError, fetch, sidecar
from edm2lib.official.refstats import import_dataset_refs, load_dataset_refs
from edm2lib.official.unpickler import UnsafePickleError
from edm2lib.pipeline.config import official_downloads, points, validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


# --- registry ---


def test_release_names_urls_and_raw_times():
    assert releases.posthoc_url("edm2-img512-xs", 2**31, 0.135) == (
        "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/edm2-img512-xs-2147483-0.135.pkl"
    )
    assert releases.posthoc_name("edm2-img512-xs", 134217728, 0.125) == "edm2-img512-xs-0134217-0.125.pkl"
    assert releases.posthoc_name("edm2-img64-xl", releases.release("edm2-img64-xl").nimg, 0.04) == (
        "edm2-img64-xl-0671088-0.040.pkl"
    )
    times = releases.raw_times("edm2-img512-xs", 2**31)
    assert len(times) == 64 and times[0] == 2**25 and times[-1] == 2**31
    assert releases.raw_url("edm2-img512-l", 2**25, 0.05).endswith(
        "/raw-snapshots/edm2-img512-l/edm2-img512-l-0033554-0.050.pkl"
    )
    assert releases.refs_url("img64").endswith("/dataset-refs/img64.pkl")
    assert releases.release("edm2-img512-xs-uncond").preset == "edm2-img512-xs"
    assert not releases.release("edm2-img512-xs-uncond").conditional
    for rel in releases.RELEASES.values():  # every listed final time is a whole number of raw intervals
        assert rel.nimg is None or rel.nimg % releases.RAW_SNAPSHOT_NIMG == 0, rel.name


def test_unknown_model_and_time_are_one_line_each():
    with pytest.raises(ValueError, match=r"unknown EDM2 release 'edm2-img512-xxxl'.*edm2-img512-xs, ") as e:
        releases.release("edm2-img512-xxxl")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no reconstruction released at 1024 kimg"):
        releases.posthoc_name("edm2-img512-s", 1000 * 1024, 0.1)
    with pytest.raises(ValueError, match="raw snapshots exist every 33554432 images"):
        releases.raw_name("edm2-img512-s", 2**24, 0.05)


# --- fetcher ---


class _Server:
    """A 127.0.0.1 HTTP server for one file that honours Range requests; `cut` ends the next reply early."""

    def __init__(self, data: bytes):
        self.data, self.cut, self.ranges = data, None, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                start = 0
                if self.headers.get("Range"):
                    outer.ranges.append(self.headers["Range"])
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                body = outer.data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(outer.data) - 1}/{len(outer.data)}"
                    )
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut is not None:
                    body, outer.cut = body[: outer.cut], None
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/edm2-img512-xs-2147483-0.135.pkl"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture()
def server():
    s = _Server(np.random.default_rng(0).bytes(3 << 20 | 123))
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_truncated_transfer_keeps_only_a_part_file_and_the_next_fetch_resumes_it(server, tmp_path):
    dest = tmp_path / "dl" / "edm2-img512-xs-2147483-0.135.pkl"
    server.cut = 1 << 20
    with pytest.raises(FetchError) as e:
        fetch(server.url, dest, allow_http=True, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and server.url in msg and str(dest) in msg and "stopped at 1048576 of" in msg
    assert not dest.exists() and dest.with_name(dest.name + ".part").stat().st_size == 1 << 20
    assert fetch(server.url, dest, allow_http=True, progress=False) == dest
    assert server.ranges == ["bytes=1048576-"]  # resumed, not restarted
    assert dest.read_bytes() == server.data and not dest.with_name(dest.name + ".part").exists()
    import hashlib

    assert sidecar(dest).read_text().split()[0] == hashlib.sha256(server.data).hexdigest()


def test_checksum_mismatch_removes_the_file(server, tmp_path):
    dest = tmp_path / "x.pkl"
    with pytest.raises(ValueError, match="does not match the published 0000") as e:
        fetch(server.url, dest, sha256="0" * 64, allow_http=True, progress=False)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its part nor a sha256 record
    fetch(server.url, dest, allow_http=True, progress=False)  # first download: sha256 recorded
    dest.write_bytes(b"tampered")
    with pytest.raises(ValueError, match=r"recorded at first download.*it was deleted"):
        fetch(server.url, dest, allow_http=True, progress=False)
    assert not dest.exists()


def test_offline_names_the_url_and_where_to_put_the_file(tmp_path, monkeypatch):
    url = releases.posthoc_url("edm2-img512-xs", 2**31, 0.135)
    dest = tmp_path / "downloads" / "edm2-img512-xs-2147483-0.135.pkl"
    with pytest.raises(FetchError) as e:
        fetch(url, dest, download=False)
    msg = str(e.value)
    assert "\n" not in msg and url in msg and f"place it at {dest}" in msg and "official.local_dir" in msg
    monkeypatch.setenv("EDM2LIB_OFFLINE", "1")
    with pytest.raises(FetchError, match="downloads are off"):
        fetch(url, dest)
    assert not dest.parent.exists()


def test_local_folder_is_used_first_in_place_and_pinned(tmp_path):
    local = tmp_path / "mine"
    local.mkdir()
    (local / "img512.pkl").write_bytes(b"published bytes")
    dest = tmp_path / "dl" / "img512.pkl"
    url = releases.refs_url("img512")
    assert fetch(url, dest, local_dir=local, download=False) == local / "img512.pkl"
    assert not dest.exists() and sidecar(dest).is_file()
    (local / "img512.pkl").write_bytes(b"other bytes")
    with pytest.raises(ValueError, match="replace it with the released file"):
        fetch(url, dest, local_dir=local, download=False)
    assert (local / "img512.pkl").is_file()  # a user's file is never deleted


def test_only_https_or_file_urls(tmp_path):
    with pytest.raises(ValueError, match="only https://"):
        fetch("http://example.invalid/a.pkl", tmp_path / "a.pkl")
    src = tmp_path / "mirror" / "a.pkl"
    src.parent.mkdir()
    src.write_bytes(b"abc")
    assert fetch(src.as_uri(), tmp_path / "dl" / "a.pkl", progress=False).read_bytes() == b"abc"


# --- published reference statistics ---


def _refs(path, n=50000, dim_fid=6, dim_dino=4, seed=0):
    rng = np.random.default_rng(seed)

    def gaussian(d):
        a = rng.standard_normal((d, d))
        return {"mu": rng.standard_normal(d), "sigma": a @ a.T}

    data = {"num_images": n, "fid": gaussian(dim_fid), "fd_dinov2": gaussian(dim_dino)}
    path.write_bytes(pickle.dumps(data))
    return data


IDENTITY = {"name": "dinov2", "arch": "a", "weights": "w", "sha256": "s", "resize": "r"}


def test_published_refs_round_trip_exactly(tmp_path):
    data = _refs(tmp_path / "img512.pkl", n=np.int64(50000))
    out = {"inception": tmp_path / "ref-inception.npz", "dinov2": tmp_path / "ref-dinov2.npz"}
    ids = {"inception": {**IDENTITY, "name": "inception"}, "dinov2": IDENTITY}
    import_dataset_refs(tmp_path / "img512.pkl", out, ids, {"inception": 6, "dinov2": 4}, 512)
    for det, metric in (("inception", "fid"), ("dinov2", "fd_dinov2")):
        mu, sigma, meta = load_stats(out[det])
        assert np.array_equal(mu, data[metric]["mu"]) and np.array_equal(sigma, data[metric]["sigma"])
        assert meta["detector"] == ids[det] and meta["count"] == 50000 and meta["resolution"] == [512, 512]
        assert meta["source"].startswith("img512.pkl sha256 ")


def test_refs_with_the_wrong_feature_size_write_nothing(tmp_path):
    _refs(tmp_path / "img512.pkl")
    with pytest.raises(ValueError, match="has 4 features, the dinov2 detector gives 1024"):
        import_dataset_refs(tmp_path / "img512.pkl", {"dinov2": tmp_path / "r.npz"}, {"dinov2": IDENTITY},
                            {"dinov2": 1024}, 512)  # fmt: skip
    assert not (tmp_path / "r.npz").exists()


class _Evil:
    def __reduce__(self):
        return (print, ("executed",))


@pytest.mark.parametrize(
    "payload, match",
    [
        (pickle.dumps({"num_images": 2, "fid": _Evil()}), r"refusing global 'builtins.print'.*nothing was"),
        (b"not a pickle at all", "not a readable reference-statistics pickle"),
        (pickle.dumps({"ema": 1, "encoder": 2}), "without fid/fd_dinov2"),
        (pickle.dumps({"num_images": 10, "fid": {"mu": np.zeros(3), "sigma": np.zeros((2, 2))}}), "Gaussian"),
    ],
)
def test_a_pickle_that_is_not_a_refs_file_is_one_line(tmp_path, payload, match, capsys):
    path = tmp_path / "img512.pkl"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=match) as e:
        load_dataset_refs(path)
    assert "\n" not in str(e.value) and capsys.readouterr().out == ""


def test_truncated_refs_pickle_and_refs_given_to_the_network_converter(tmp_path):
    _refs(tmp_path / "full.pkl")
    (tmp_path / "img512.pkl").write_bytes((tmp_path / "full.pkl").read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable reference-statistics pickle"):
        load_dataset_refs(tmp_path / "img512.pkl")
    with pytest.raises(ValueError, match="pickle holds no 'ema' network"):
        convert(tmp_path / "full.pkl", tmp_path / "out")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    with pytest.raises(UnsafePickleError, match="refusing global"):
        convert_path = tmp_path / "evil.pkl"
        convert_path.write_bytes(pickle.dumps({"ema": _Evil()}))
        convert(convert_path, tmp_path / "out")


# --- configs and the paper column ---


def _config(name):
    return validate_config(yaml.safe_load((ROOT / "config" / name).read_text()), SCHEMA)


def test_official512_has_every_published_no_guidance_and_cfg_setting():
    config = _config("official512.yaml")
    settings = {
        (config["runs"][p.run]["model"], p.nimg, round(p.sigma_rel, 3), config["guidance"][p.guidance]["w"])
        for p in points(config)
    }
    published = {
        (r.model, r.nimg, r.sigma_rel, r.w)
        for r in paper.RESULTS
        if r.model.startswith("edm2-img512") and (r.guide is None or r.guide[2] == "same")
    }
    assert len(published) == 24 and settings == published
    urls = official_downloads(config)
    # refs + 23 main files (XXL uses 0.015 twice) + the guide at the 8 distinct CFG sigma_rels
    assert len(urls) == len(set(urls)) == 1 + 23 + 8
    assert sum("xs-uncond-2147483-" in u for u in urls) == 8
    assert urls[0].endswith("dataset-refs/img512.pkl")


def test_official64_and_sweep_configs():
    config = _config("official64.yaml")
    assert [(config["runs"][p.run]["model"], p.sigma_rel) for p in points(config)] == [
        ("edm2-img64-s", 0.075), ("edm2-img64-m", 0.060), ("edm2-img64-l", 0.040), ("edm2-img64-xl", 0.040)
    ]  # fmt: skip
    sweep = _config("official512-sweep.yaml")
    urls = official_downloads(sweep)
    assert len(urls) == 1 + 64 * 2 and all("/raw-snapshots/edm2-img512-xs/" in u for u in urls[1:])


def test_unknown_model_in_a_config_is_one_line():
    config = yaml.safe_load((ROOT / "config" / "official64.yaml").read_text())
    config["runs"]["s"]["model"] = "edm2-img64-xs2"
    with pytest.raises(
        ValueError, match=r"^config: runs.s.model: unknown EDM2 release 'edm2-img64-xs2'; released"
    ):
        validate_config(config, SCHEMA)


def test_paper_lookup_only_at_published_settings():
    assert paper.lookup("edm2-img512-xs", 2**31, 0.135, 1.0) == {"fid": 3.53}
    assert paper.lookup("edm2-img512-xs", 2**31, 0.150, 1.7) == {"fd_dinov2": 79.94}
    assert paper.lookup("edm2-img512-xxl", 939524096, 0.015, 1.2) == {"fid": 1.81}
    assert paper.lookup("edm2-img512-xs", 2**31, 0.135, 1.4) == {}
    assert paper.lookup("edm2-img512-xs", 2**30, 0.135, 1.0) == {}
