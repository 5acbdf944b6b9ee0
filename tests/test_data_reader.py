"""The shared reader and the pixel codec: random access, labels, pickling, errors."""

import pickle

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from edm2lib.data import ImageDataset, make_codec, open_dataset, prepare_dataset


@pytest.fixture(scope="module")
def images_h5(tmp_path_factory):
    """12 images of 8x8 in three classes; image i is filled with the value 20 * i."""
    root = tmp_path_factory.mktemp("reader")
    for i in range(12):
        d = root / "src" / f"class{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (20 * i, 20 * i, 20 * i)).save(d / f"img{i:02d}.png")
    prepare_dataset(root / "src", root / "images.h5", 8, transform="resize", workers=1, progress=False)
    return root / "images.h5"


def _values(ds, order):
    # sorted names: class0/img00, img03, img06, img09, class1/img01, ... -> the stored fill values
    return [20 * order[i] for i in range(len(ds))]


def test_pixel_codec_maps_uint8_to_minus_one_one_and_back_exactly():
    codec = make_codec({"kind": "pixels"})
    raw = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, 16, 16)
    x = codec.encode_batch(raw)
    assert x.dtype == torch.float32 and x.min() == -1 and x.max() == 1
    assert torch.equal(codec.decode(x), raw.permute(0, 2, 3, 1))
    clipped = codec.decode(torch.tensor([-3.0, 3.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2))
    assert clipped[0, 0, :, 0].tolist() == [0, 255]


def test_get_batch_handles_unsorted_and_repeated_indices(images_h5):
    ds = open_dataset(images_h5)
    assert isinstance(ds, ImageDataset)
    assert (len(ds), ds.resolution, ds.channels, ds.label_dim) == (12, 8, 3, 3)
    order = [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]
    fills = _values(ds, order)
    idx = [7, 2, 7, 11, 0]
    x, labels = ds.get_batch(idx)
    assert x.shape == (5, 3, 8, 8) and labels.shape == (5, 3)
    np.testing.assert_allclose(x[:, 0, 0, 0].numpy(), [fills[i] / 127.5 - 1 for i in idx], atol=1e-6)
    assert labels.argmax(1).tolist() == [1, 0, 1, 2, 0] and labels.sum(1).tolist() == [1] * 5
    assert ds.class_id([11]).tolist() == [2]
    assert ds.class_names == ["class0", "class1", "class2"]


def test_dataset_pickles_without_its_open_file_and_reopens(images_h5):
    ds = open_dataset(images_h5)
    first = ds.get_batch([5])[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._file is None
    assert torch.equal(clone.get_batch([5])[0], first)
    ds.close()
    assert torch.equal(ds.get_batch([5])[0], first)  # reopens lazily


def test_index_out_of_range_names_the_file(images_h5):
    with pytest.raises(IndexError, match=r"images\.h5: index out of range for 12"):
        open_dataset(images_h5).get_batch([12])


def test_unlabelled_data_set_has_label_dim_zero(tmp_path):
    (tmp_path / "flat").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, i, i)).save(tmp_path / "flat" / f"{i}.png")
    prepare_dataset(tmp_path / "flat", tmp_path / "u.h5", 8, workers=1, progress=False)
    ds = open_dataset(tmp_path / "u.h5")
    _, labels = ds.get_batch([0, 2])
    assert ds.label_dim == 0 and labels.shape == (2, 0) and ds.class_id([1]).tolist() == [-1]


def test_missing_file_and_wrong_format_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data set"):
        open_dataset(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        open_dataset(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something/else"
    with pytest.raises(ValueError, match="'something/else' is not one of"):
        open_dataset(tmp_path / "other.h5")
