"""generate(): seed-ordered HDF5 + grid, batch/rank-independent images, streaming, guidance attrs, errors."""

import json

import h5py
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from edm2lib.data.encoders import PixelCodec, sd_vae_description
from edm2lib.files import save_network, sha256_file
from edm2lib.nn.networks import Precond
from edm2lib.sampling.generate import generate, rank_batches, sample_batches
from edm2lib.sampling.heun import count_nfe, edm_sampler, karras_sigmas, seed_noise_and_labels

SEEDS = list(range(16))
STEPS = 4
RES = 8


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_net(resolution=RES, label_dim=4, seed=0):
    """A small random Precond with its zero-initialised gains set to 0.7, so every layer shapes the output."""
    torch.manual_seed(seed)
    net = Precond(
        resolution, 3, label_dim, model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[]
    )
    net.load_state_dict({k: (v.fill_(0.7) if k.endswith("gain") else v) for k, v in net.state_dict().items()})
    return net.eval().requires_grad_(False)


def _net_file(path, encoder=None, **kwargs):
    net = _tiny_net(**kwargs)
    encoder = encoder or {"kind": "pixels"}
    save_network(path, net.state_dict(), net.config, dtype=None, encoder=encoder, nimg=0)
    return path


@pytest.fixture(scope="module")
def net_file(tmp_path_factory):
    """A conditional 8x8x3 pixel-space network file (4 classes)."""
    return _net_file(tmp_path_factory.mktemp("nets") / "cond.safetensors")


@pytest.fixture(scope="module")
def guide_file(tmp_path_factory):
    """An unconditional 8x8x3 network file (the CFG guide role)."""
    return _net_file(tmp_path_factory.mktemp("nets") / "uncond.safetensors", label_dim=0, seed=1)


def _read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in f}, dict(f.attrs)


def test_hdf5_holds_decoded_samples_in_seed_order_with_provenance(net_file, tmp_path):
    seeds = [7, 3, 11, 0, 5]
    out, grid = tmp_path / "s.h5", tmp_path / "grid.png"
    summary = generate(net_file, seeds, out, num_steps=STEPS, batch_size=2, device="cpu", grid_png=grid)
    data, attrs = _read(out)

    draw = seed_noise_and_labels(seeds, [3, RES, RES], 4)
    expected = (
        PixelCodec().decode(edm_sampler(_tiny_net(), draw.noise, draw.labels, karras_sigmas(STEPS))).numpy()
    )
    assert data["images"].dtype == np.uint8 and data["images"].shape == (5, RES, RES, 3)
    assert np.abs(data["images"].astype(int) - expected).max() <= 1  # float rounding may flip one level
    assert data["seeds"].tolist() == seeds and data["labels"].tolist() == draw.classes.tolist()
    assert attrs["format"] == "edm2lib.samples/1"
    assert attrs["network_sha256"] == sha256_file(net_file) and attrs["guide"] == ""
    assert attrs["nfe"] == 7 and attrs["nfe_guide"] == 0
    assert json.loads(attrs["sampler"])["num_steps"] == STEPS
    assert summary["images"] == 5 and summary["nfe"]["total"] == 7

    png = np.asarray(Image.open(grid))
    assert png.shape == (2 * RES, 3 * RES, 3)  # 5 images: ceil(sqrt(5)) = 3 columns, 2 rows
    for i in range(5):
        r, c = divmod(i, 3)
        assert np.array_equal(png[RES * r : RES * (r + 1), RES * c : RES * (c + 1)], data["images"][i])
    assert (png[RES:, 2 * RES :] == 0).all()  # the unused cell stays black


def test_seeds_give_the_same_images_for_batch_sizes_1_4_16(net_file):
    by_batch = {}
    for batch in (1, 4, 16):
        got = []
        generate(
            net_file, SEEDS, num_steps=STEPS, batch_size=batch, device="cpu", progress=False,
            on_batch=lambda img, s, lab: got.append((img, s, lab)),  # noqa: B023
        )  # fmt: skip
        assert [len(s) for _, s, _ in got] == [batch] * (16 // batch)
        by_batch[batch] = [torch.cat(t) for t in zip(*got)]
    images1, seeds1, labels1 = by_batch[1]
    assert seeds1.tolist() == SEEDS
    for batch in (4, 16):
        images, seeds, labels = by_batch[batch]
        assert torch.equal(seeds, seeds1) and torch.equal(labels, labels1)
        # Batched CPU kernels may round differently per batch size (~1e-5 in x): at most one uint8 level.
        diff = (images.int() - images1.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01


def test_sample_batches_samples_loaded_networks_chunk_by_chunk():
    seeds, sigmas = [9, 2, 4, 7, 1], karras_sigmas(STEPS)
    chunks = [np.arange(0, 3), np.arange(3, 5)]
    got = list(sample_batches(_tiny_net(), PixelCodec(), seeds, chunks, sigmas, class_idx=2))
    assert [b.index.tolist() for b in got] == [[0, 1, 2], [3, 4]]
    assert torch.cat([b.seeds for b in got]).tolist() == seeds and all((b.labels == 2).all() for b in got)
    draw = seed_noise_and_labels(seeds[3:], [3, RES, RES], 4, class_idx=2)
    x = edm_sampler(_tiny_net(), draw.noise, draw.labels, sigmas, generators=draw.generators)
    assert torch.equal(got[1].images, PixelCodec().decode(x))


def _rank_worker(rank, world, init_file, net_file, out):
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        generate(net_file, SEEDS, out, num_steps=STEPS, batch_size=4, device="cpu", grid_png=f"{out}.png")
    finally:
        torch.distributed.destroy_process_group()


def test_two_ranks_write_the_same_file_as_one_rank(net_file, tmp_path):
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    generate(net_file, SEEDS, one, num_steps=STEPS, batch_size=4, device="cpu", grid_png=f"{one}.png")
    mp.spawn(_rank_worker, args=(2, tmp_path / "pg", net_file, two), nprocs=2, join=True)
    (d1, a1), (d2, a2) = _read(one), _read(two)
    for key in ("images", "seeds", "labels"):
        assert np.array_equal(d1[key], d2[key]), key
    assert a1["network_sha256"] == a2["network_sha256"]
    assert np.array_equal(np.asarray(Image.open(f"{one}.png")), np.asarray(Image.open(f"{two}.png")))
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".h5") == ["one.h5", "two.h5"]


def test_rank_batches_cover_every_seed_once():
    for n, batch, world in [(16, 4, 2), (10, 3, 4), (3, 8, 4), (50000, 64, 8)]:
        got = np.concatenate([np.concatenate(rank_batches(n, batch, r, world)) for r in range(world)
                              if rank_batches(n, batch, r, world)])  # fmt: skip
        assert sorted(got.tolist()) == list(range(n))
        assert max(len(c) for r in range(world) for c in rank_batches(n, batch, r, world)) <= batch


def test_guided_generation_records_guide_and_interval_nfe(net_file, guide_file, tmp_path):
    out = tmp_path / "g.h5"
    kw = dict(num_steps=8, guidance=1.8, guidance_interval=(0.3, 5.0))
    generate(net_file, SEEDS[:4], out, gnet_path=guide_file, batch_size=4, device="cpu", **kw)
    plain = tmp_path / "p.h5"
    generate(net_file, SEEDS[:4], plain, num_steps=8, batch_size=4, device="cpu")
    (d, a), (dp, _) = _read(out), _read(plain)
    expected = count_nfe(karras_sigmas(8), kw["guidance"], kw["guidance_interval"])
    assert 0 < expected["guide"] < expected["main"] == 15
    assert (a["nfe_main"], a["nfe_guide"], a["nfe"]) == (15, expected["guide"], 15 + expected["guide"])
    assert a["guide_sha256"] == sha256_file(guide_file) and a["guidance"] == 1.8
    assert a["guidance_interval"].tolist() == [0.3, 5.0]
    assert not np.array_equal(d["images"], dp["images"])  # guidance changed the images


def test_fixed_class_labels_every_image(net_file, tmp_path):
    labels = []
    generate(
        net_file, SEEDS[:4], num_steps=2, class_idx=3, device="cpu",
        on_batch=lambda img, s, lab: labels.extend(lab.tolist()),
    )  # fmt: skip
    assert labels == [3, 3, 3, 3]


def _bad_inputs(net_file, guide_file, tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    small_guide = _net_file(tmp_path / "small.safetensors", resolution=4, label_dim=0)
    latent_guide = _net_file(tmp_path / "latent.safetensors", encoder=sd_vae_description(), label_dim=0)
    return [
        (dict(net_path=tmp_path / "missing.safetensors"), FileNotFoundError, "missing.safetensors"),
        (dict(net_path=corrupt), ValueError, "corrupt.safetensors"),
        (dict(guidance=2.0), ValueError, "guiding network"),
        (dict(guidance=2.0, gnet_path=small_guide), ValueError, "same space"),
        (dict(guidance=2.0, gnet_path=latent_guide), ValueError, "sd-vae space"),
        (dict(gnet_path=tmp_path / "noguide.safetensors", guidance=2.0), FileNotFoundError, "noguide"),
        (dict(net_path=guide_file, class_idx=1), ValueError, "unconditional"),
        (dict(num_steps=1), ValueError, "at least 2 steps"),
        (dict(seeds=[]), ValueError, "no seeds"),
    ]


def test_bad_inputs_raise_clear_errors_before_sampling(net_file, guide_file, tmp_path):
    for kwargs, error, match in _bad_inputs(net_file, guide_file, tmp_path):
        calls = []
        kw = dict(net_path=net_file, seeds=SEEDS[:2], out_h5=tmp_path / "x.h5", device="cpu", num_steps=2)
        kw.update(kwargs, on_batch=lambda *a: calls.append(a))  # noqa: B023
        with pytest.raises(error, match=match):
            generate(**kw)
        assert calls == [] and not (tmp_path / "x.h5").exists(), kwargs
    assert not list(tmp_path.glob(".*part*"))  # no leftover part files
    with pytest.raises(ValueError, match="nothing to do"):
        generate(net_file, SEEDS[:2], device="cpu")
