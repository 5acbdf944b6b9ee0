"""VAE encode/decode with a tiny random AutoencoderKL: end to end, EDM2 constants, resume, ranks."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import edm2lib.data.encode as encode_mod
from edm2lib.data import encode_dataset, make_codec, open_dataset, prepare_dataset, sd_vae_description
from edm2lib.data.encode import part_path
from edm2lib.data.encoders import encode_pixels, load_vae
from edm2lib.files import sha256_file


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    """A tiny random AutoencoderKL (8/16 channels, 4 latent channels, factor 2) saved as a local folder."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    d = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(d, safe_serialization=True)
    return d


@pytest.fixture(scope="module")
def images_h5(tmp_path_factory) -> Path:
    """10 labelled 16x16 images in two classes."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(1)
    for c in ("cats", "dogs"):
        (root / "src" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                root / "src" / c / f"{i}.png"
            )
    prepare_dataset(root / "src", root / "images.h5", 16, workers=1, progress=False)
    return root / "images.h5"


def test_stored_constants_match_edm2_facts():
    codec = make_codec(sd_vae_description())
    # EDM2 App. B.1: scale = 0.5 / raw_std, bias = -raw_mean * scale
    np.testing.assert_allclose(codec.scale, [0.119904, 0.108225, 0.134771, 0.152439], atol=1e-6)
    np.testing.assert_allclose(codec.bias, [-0.696643, -0.351732, -0.016173, 0.327744], atol=1e-6)
    assert codec.channels == 4 and codec.encoder["vae"] == "stabilityai/sd-vae-ft-mse"


def test_prepare_encode_decode_end_to_end(vae_dir, images_h5, tmp_path):
    s = encode_dataset(images_h5, tmp_path / "latents.h5", vae=vae_dir, batch_size=4, progress=False)
    assert s["count"] == 10 and s["shape"] == [4, 8, 8]
    assert not list(tmp_path.glob("*.part-*"))  # parts are removed once assembled
    ds = open_dataset(tmp_path / "latents.h5")
    assert (len(ds), ds.channels, ds.resolution, ds.label_dim) == (10, 4, 8, 2)
    with h5py.File(tmp_path / "latents.h5") as f:
        assert f["mean"].shape == (10, 4, 8, 8) and f["mean"].dtype == np.float32
        assert f["labels"][:].tolist() == [0] * 5 + [1] * 5
        np.testing.assert_allclose(f.attrs["raw_mean"], [5.81, 3.25, 0.12, -2.15])
        np.testing.assert_allclose(f.attrs["raw_std"], [4.17, 4.62, 3.71, 3.28])
        assert (f.attrs["final_mean"], f.attrs["final_std"]) == (0.0, 0.5)
        assert list(f.attrs["input_range"]) == [0.0, 1.0]
        assert f.attrs["vae_sha256"] == sha256_file(vae_dir / "diffusion_pytorch_model.safetensors")
        assert json.loads(f.attrs["encoder"])["vae"] == str(vae_dir)
    # the stored posterior equals a direct encode of the pixels fed in [0, 1]
    pixels = open_dataset(images_h5).raw([3])
    vae = load_vae(vae_dir)
    np.testing.assert_allclose(ds.raw([3]).numpy(), encode_pixels(vae, pixels).numpy(), rtol=1e-5, atol=1e-6)
    x, labels = ds.get_batch([0, 9], torch.Generator().manual_seed(0))
    assert x.shape == (2, 4, 8, 8) and x.dtype == torch.float32 and labels.tolist() == [[1, 0], [0, 1]]
    img = make_codec(ds.encoder).decode(x)  # loads the VAE from the path the description names
    assert img.shape == (2, 16, 16, 3) and img.dtype == torch.uint8


def test_decode_of_encode_has_pixel_range_shape_and_dtype(vae_dir):
    vae = load_vae(vae_dir)
    codec = make_codec(sd_vae_description(str(vae_dir)), vae=vae)
    pixels = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    x = codec.encode_batch(encode_pixels(vae, pixels), torch.Generator().manual_seed(1))
    out = codec.decode(x)
    assert out.shape == (3, 16, 16, 3) and out.dtype == torch.uint8
    # decode = clamp(vae(z), 0, 1) * 255 truncated (docs/data.md), with z the unscaled latent
    z = (x - codec.bias.view(1, 4, 1, 1)) / codec.scale.view(1, 4, 1, 1)
    ref = (vae.decode(z)["sample"].clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert torch.equal(out, ref)


def test_latent_batches_draw_mean_plus_std_noise_anew_from_the_generator(vae_dir, images_h5, tmp_path):
    encode_dataset(images_h5, tmp_path / "latents.h5", vae=vae_dir, progress=False)
    ds = open_dataset(tmp_path / "latents.h5")
    raw = ds.raw([4, 2])
    mean, std = raw[:, :4], raw[:, 4:]
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    scale = 0.5 / torch.tensor([4.17, 4.62, 3.71, 3.28]).view(1, 4, 1, 1)
    bias = -torch.tensor([5.81, 3.25, 0.12, -2.15]).view(1, 4, 1, 1) * scale
    x, _ = ds.get_batch([4, 2], torch.Generator().manual_seed(7))
    torch.testing.assert_close(x, (mean + std * noise) * scale + bias)
    assert not torch.equal(x, ds.get_batch([4, 2], torch.Generator().manual_seed(8))[0])
    # one generator per example gives the same as one call per example
    gens = [torch.Generator().manual_seed(s) for s in (11, 12)]
    each = [ds.get_batch([i], torch.Generator().manual_seed(s))[0] for i, s in zip([4, 2], (11, 12))]
    torch.testing.assert_close(ds.get_batch([4, 2], gens)[0], torch.cat(each), rtol=0, atol=0)


def test_killed_encode_resumes_and_matches_an_uninterrupted_run(vae_dir, images_h5, tmp_path, monkeypatch):
    encode_dataset(images_h5, tmp_path / "ref.h5", vae=vae_dir, batch_size=3, progress=False)
    calls = {"n": 0}
    real = encode_mod.encode_pixels

    def dies_on_third_batch(vae, pixels):
        calls["n"] += 1
        if calls["n"] == 4:  # probe + two batches done
            raise KeyboardInterrupt("killed")
        return real(vae, pixels)

    monkeypatch.setattr(encode_mod, "encode_pixels", dies_on_third_batch)
    out = tmp_path / "latents.h5"
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(images_h5, out, vae=vae_dir, batch_size=3, progress=False)
    assert not out.exists()
    with h5py.File(part_path(out, 0, 1)) as f:
        assert f.attrs["done"] == 6
    monkeypatch.setattr(encode_mod, "encode_pixels", real)
    calls["n"] = 0
    encode_dataset(images_h5, out, vae=vae_dir, batch_size=3, progress=False)
    with h5py.File(out) as a, h5py.File(tmp_path / "ref.h5") as b:
        for k in ("mean", "std", "labels"):
            np.testing.assert_array_equal(a[k][:], b[k][:])
    assert out.read_bytes() == (tmp_path / "ref.h5").read_bytes()


def test_two_ranks_encode_disjoint_halves_that_assemble_into_the_single_rank_file(
    vae_dir, images_h5, tmp_path
):
    encode_dataset(images_h5, tmp_path / "one.h5", vae=vae_dir, batch_size=4, progress=False)
    out = tmp_path / "two.h5"
    with pytest.raises(ValueError, match="part is incomplete"):  # rank 0 alone cannot finish
        encode_dataset(images_h5, out, vae=vae_dir, batch_size=4, rank=0, world_size=2, progress=False)
    encode_dataset(images_h5, out, vae=vae_dir, batch_size=4, rank=1, world_size=2, progress=False)
    assert not out.exists() and part_path(out, 1, 2, finished=True).exists()
    encode_dataset(images_h5, out, vae=vae_dir, batch_size=4, rank=0, world_size=2, progress=False)
    with h5py.File(out) as a, h5py.File(tmp_path / "one.h5") as b:
        np.testing.assert_allclose(a["mean"][:], b["mean"][:], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(a["std"][:], b["std"][:], rtol=1e-6, atol=1e-6)
    assert not list(tmp_path.glob("two.h5.part-*"))


def test_float16_storage_halves_the_arrays(vae_dir, images_h5, tmp_path):
    encode_dataset(images_h5, tmp_path / "l16.h5", vae=vae_dir, dtype="float16", progress=False)
    with h5py.File(tmp_path / "l16.h5") as f:
        assert f["mean"].dtype == np.float16
    x, _ = open_dataset(tmp_path / "l16.h5").get_batch([0])
    assert x.dtype == torch.float32


def test_missing_vae_folder_error_says_which_files_to_put_where(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"lacks \['diffusion_pytorch_model.safetensors'\]"):
        load_vae(tmp_path / "vae")
    with pytest.raises(FileNotFoundError, match=r"config\.json and diffusion_pytorch_model\.safetensors"):
        load_vae(tmp_path / "nope")


def _encode_rank(rank: int, port: int, images: str, out: str, vae: str) -> None:
    torch.distributed.init_process_group("gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        encode_dataset(images, out, vae=vae, batch_size=4, progress=False)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_torch_distributed_ranks_share_the_encode(vae_dir, images_h5, tmp_path):
    import multiprocessing as mp
    import socket

    encode_dataset(images_h5, tmp_path / "one.h5", vae=vae_dir, batch_size=4, progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    args = (port, str(images_h5), str(tmp_path / "two.h5"), str(vae_dir))
    procs = [ctx.Process(target=_encode_rank, args=(r, *args)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0]
    with h5py.File(tmp_path / "two.h5") as a, h5py.File(tmp_path / "one.h5") as b:
        np.testing.assert_allclose(a["mean"][:], b["mean"][:], rtol=1e-6, atol=1e-6)
        assert a["labels"][:].tolist() == b["labels"][:].tolist()
