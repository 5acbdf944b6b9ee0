"""Feature statistics, stats files, reference statistics and scoring of samples (tiny detectors)."""

import json

import h5py
import numpy as np
import pytest
import torch

from edm2lib.metrics import (
    Detector,
    FeatureCollector,
    FeatureStats,
    compute_stats,
    frechet_distance,
    load_stats,
    reference_stats,
    save_stats,
    score_samples,
    score_stats,
)


class ColourMoments(torch.nn.Module):
    """A cheap deterministic 'detector': per-channel mean, std and a 2x2 pooled layout, 18 features."""

    def forward(self, x):
        pooled = torch.nn.functional.adaptive_avg_pool2d(x / 255, 2).flatten(1)
        return torch.cat([x.mean((2, 3)) / 255, x.std((2, 3)) / 255, pooled], 1)


def tiny_detector(name="inception", sha="0" * 64):
    identity = {"name": name, "arch": "colour-moments", "weights": "t.pth", "sha256": sha, "resize": "none"}
    return Detector(name, ColourMoments(), 18, identity)


def make_images(n, size=16, seed=0, shift=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, (n, 1, 1, 3)) + rng.integers(0, 56, (n, size, size, 3)) + shift
    return np.clip(base, 0, 255).astype(np.uint8)


def write_h5(path, images, seeds=None):
    with h5py.File(path, "w") as f:
        f["images"] = images
        if seeds is not None:
            f["seeds"] = np.asarray(seeds, np.int64)
    return path


def features_of(images):
    with torch.no_grad():
        return tiny_detector()(images).double().numpy()


def test_streaming_stats_equal_numpy_mean_and_unbiased_covariance():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((103, 7)) * 3 + 5
    stats = FeatureStats(7)
    for chunk in np.array_split(f, [1, 40, 41, 90]):
        stats.update(torch.from_numpy(chunk).float())
    f32 = f.astype(np.float32).astype(np.float64)
    assert stats.n == 103
    np.testing.assert_allclose(stats.mu, f32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(f32, rowvar=False), rtol=1e-10, atol=1e-12)


def test_stats_need_two_images_and_consistent_shape_and_resolution():
    stats = FeatureStats(4)
    stats.update(torch.ones(1, 4), (16, 16))
    with pytest.raises(ValueError, match="at least 2 images, got 1"):
        _ = stats.sigma
    with pytest.raises(ValueError, match=r"expected \[B, 4\]"):
        stats.update(torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"\(32, 32\) mixed with images of \(16, 16\)"):
        stats.update(torch.ones(2, 4), (32, 32))


def test_stats_file_round_trip_keeps_values_and_identity(tmp_path):
    det = tiny_detector()
    stats = compute_stats([make_images(5), make_images(6, seed=1)], det, progress=False)["inception"]
    path = tmp_path / "ref-inception.npz"
    save_stats(path, stats, det.identity, "unit test")
    mu, sigma, meta = load_stats(path)
    assert np.array_equal(mu, stats.mu) and np.array_equal(sigma, stats.sigma)
    assert meta == {
        "format": "edm2lib.stats/1",
        "detector": det.identity,
        "resolution": [16, 16],
        "count": 11,
        "source": "unit test",
    }
    assert [p.name for p in tmp_path.iterdir()] == ["ref-inception.npz"]  # written atomically, no leftovers


def test_load_stats_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.npz"):
        load_stats(tmp_path / "nope.npz")
    np.savez(tmp_path / "edm1.npz", mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(ValueError, match="not an edm2lib stats file"):
        load_stats(tmp_path / "edm1.npz")


def test_reference_stats_equal_direct_computation_and_subset_is_seeded(tmp_path):
    imgs = make_images(20)
    h5 = write_h5(tmp_path / "images.h5", imgs)
    det = tiny_detector()
    out = {"inception": tmp_path / "ref.npz"}
    meta = reference_stats(h5, out, det, batch_size=6, progress=False)["inception"]
    mu, sigma, _ = load_stats(out["inception"])
    f = features_of(imgs)
    np.testing.assert_allclose(mu, f.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), rtol=1e-5, atol=1e-9)
    assert meta["count"] == 20 and meta["resolution"] == [16, 16] and "20 of 20 images" in meta["source"]
    sub = reference_stats(h5, out, det, batch_size=4, max_images=8, seed=3, progress=False)["inception"]
    idx = np.sort(np.random.default_rng(3).choice(20, 8, replace=False))
    np.testing.assert_allclose(load_stats(out["inception"])[0], features_of(imgs[idx]).mean(0), rtol=1e-6)
    assert sub["count"] == 8 and "seed 3" in sub["source"]


def test_score_of_samples_equals_frechet_of_features_per_seed_block(tmp_path):
    det = tiny_detector()
    ref = reference_stats(
        write_h5(tmp_path / "d.h5", make_images(30)), {"inception": tmp_path / "r.npz"}, det
    )
    assert ref["inception"]["count"] == 30
    samples = make_images(18, seed=7, shift=20)
    h5 = write_h5(tmp_path / "s.h5", samples, seeds=np.arange(100, 118))
    result = score_samples(
        h5, {"inception": tmp_path / "r.npz"}, det, seed_blocks=3, batch_size=4, progress=False
    )
    mu_r, sigma_r, _ = load_stats(tmp_path / "r.npz")
    expected = []
    for b in range(3):
        f = features_of(samples[6 * b : 6 * b + 6])
        expected.append(frechet_distance(f.mean(0), np.cov(f, rowvar=False), mu_r, sigma_r))
    assert [blk["seeds"] for blk in result["blocks"]] == [[100, 105], [106, 111], [112, 117]]
    assert [blk["n"] for blk in result["blocks"]] == [6, 6, 6]
    np.testing.assert_allclose([blk["fid"] for blk in result["blocks"]], expected, rtol=1e-5)
    assert result["fid_min"] == min(blk["fid"] for blk in result["blocks"])
    assert result["fid_mean"] == pytest.approx(np.mean(expected), rel=1e-5)
    assert result["detectors"]["fid"] == det.identity and result["random_init"] is False
    json.dumps(result)  # ready for metrics/<run>/<point>.json


def test_batch_iterators_score_like_the_file_and_identical_sets_score_zero(tmp_path):
    det = tiny_detector()
    imgs = make_images(12)
    h5 = write_h5(tmp_path / "d.h5", imgs)
    refs = {"inception": tmp_path / "r.npz"}
    reference_stats(h5, refs, det, progress=False)
    same = score_samples(iter([imgs[:5], imgs[5:]]), refs, det, progress=False)
    assert same["num_blocks"] == 1 and abs(same["fid_min"]) < 1e-6
    whole = score_samples(imgs, refs, det, batch_size=5, progress=False)  # one array = one block
    assert whole["blocks"][0]["n"] == 12 and abs(whole["fid_min"]) < 1e-6
    blocks = score_samples([[imgs[:6]], iter([imgs[6:]])], refs, det, progress=False)
    by_file = score_samples(
        [write_h5(tmp_path / "a.h5", imgs[:6]), write_h5(tmp_path / "b.h5", imgs[6:])], refs, det
    )
    np.testing.assert_allclose(
        [b["fid"] for b in blocks["blocks"]], [b["fid"] for b in by_file["blocks"]], rtol=1e-9
    )


def test_collector_as_generate_on_batch_callback_scores_like_score_samples(tmp_path):
    det = tiny_detector()
    refs = {"inception": tmp_path / "r.npz"}
    reference_stats(write_h5(tmp_path / "d.h5", make_images(10)), refs, det, progress=False)
    samples = make_images(8, seed=4)
    blocks = []
    for block in (samples[:4], samples[4:]):
        collect = FeatureCollector(det, resolution=(16, 16))
        for i in range(0, 4, 3):  # the sampler calls on_batch(images [B,H,W,3], seeds [B], labels [B])
            collect(torch.from_numpy(block[i : i + 3]), torch.arange(3), torch.zeros(3))
        blocks.append(collect.stats)
    streamed = score_stats(blocks, refs, det)
    stored = score_samples(write_h5(tmp_path / "s.h5", samples), refs, det, seed_blocks=2, progress=False)
    np.testing.assert_allclose(
        [b["fid"] for b in streamed["blocks"]], [b["fid"] for b in stored["blocks"]], rtol=1e-9
    )
    assert streamed["fid_min"] == pytest.approx(stored["fid_min"], rel=1e-9)


def test_scoring_refuses_stats_from_another_detector_or_resolution(tmp_path):
    det = tiny_detector()
    refs = {"inception": tmp_path / "r.npz"}
    reference_stats(write_h5(tmp_path / "d.h5", make_images(8)), refs, det, progress=False)
    other = tiny_detector(sha="1" * 64)
    with pytest.raises(ValueError, match=r"r\.npz: computed with detector sha256='0000"):
        score_samples([make_images(4)], refs, other, progress=False)
    with pytest.raises(ValueError, match="images of 32x32, but the reference statistics are of 16x16"):
        score_samples([make_images(4, size=32)], refs, det, progress=False)
    with pytest.raises(ValueError, match="no statistics file for detector 'dinov2'"):
        score_samples([make_images(4)], refs, [det, tiny_detector("dinov2")], progress=False)


def test_bad_sample_inputs_raise_clear_errors(tmp_path):
    det = tiny_detector()
    refs = {"inception": tmp_path / "r.npz"}
    reference_stats(write_h5(tmp_path / "d.h5", make_images(8)), refs, det, progress=False)
    with h5py.File(tmp_path / "float.h5", "w") as f:
        f["images"] = np.zeros((4, 16, 16, 3), np.float32)
    with pytest.raises(ValueError, match=r"'images' must be uint8 \[N,H,W,3\], found float32"):
        score_samples(tmp_path / "float.h5", refs, det)
    with pytest.raises(ValueError, match="at least 2 images, got 1"):
        score_samples([make_images(1)], refs, det, progress=False)
    with pytest.raises(ValueError, match="do not split into 4 equal seed blocks"):
        score_samples(write_h5(tmp_path / "s.h5", make_images(6)), refs, det, seed_blocks=4)
    with pytest.raises(ValueError, match=r"dtype torch\.float32"):
        score_samples([torch.zeros(4, 3, 16, 16)], refs, det, progress=False)


def _allreduce_worker(rank, world, tmp, features):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp / 'init'}", rank=rank, world_size=world)
    try:
        stats = FeatureStats(features.shape[1])
        stats.update(torch.from_numpy(np.array_split(features, world)[rank]))
        stats.all_reduce()
        if rank == 0:
            np.savez(tmp / "out.npz", mu=stats.mu, sigma=stats.sigma, n=stats.n)
        # each rank reads its share of the data set; rank 0 writes the summed statistics
        reference_stats(
            tmp / "d.h5", {"inception": tmp / "ref-2ranks.npz"}, tiny_detector(), 3, progress=False
        )
    finally:
        dist.destroy_process_group()


def test_all_reduce_over_two_gloo_ranks_equals_single_process_stats(tmp_path):
    features = np.random.default_rng(0).standard_normal((21, 5))
    write_h5(tmp_path / "d.h5", make_images(11))
    torch.multiprocessing.spawn(_allreduce_worker, args=(2, tmp_path, features), nprocs=2, join=True)
    got = np.load(tmp_path / "out.npz")
    assert int(got["n"]) == 21
    np.testing.assert_allclose(got["mu"], features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(got["sigma"], np.cov(features, rowvar=False), rtol=1e-10)
    reference_stats(
        tmp_path / "d.h5", {"inception": tmp_path / "ref-1rank.npz"}, tiny_detector(), progress=False
    )
    (mu2, sigma2, meta2), (mu1, sigma1, meta1) = (
        load_stats(tmp_path / f"ref-{k}.npz") for k in ("2ranks", "1rank")
    )
    assert meta2["count"] == meta1["count"] == 11
    np.testing.assert_allclose(mu2, mu1, rtol=1e-12)
    np.testing.assert_allclose(sigma2, sigma1, rtol=1e-9, atol=1e-15)
