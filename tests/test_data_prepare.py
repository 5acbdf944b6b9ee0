"""prepare: sources, transforms, broken inputs, labels layouts, determinism, Fashion-MNIST."""

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from edm2lib.data import open_dataset, prepare_dataset
from edm2lib.data.fashion_mnist import DEBIAN_DIR, FILES, load_fashion_mnist
from edm2lib.data.transforms import center_crop_dhariwal, transform_image

RNG = np.random.default_rng(0)


def _jpeg(color, size=(24, 20), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _png16_rgb(arr: np.ndarray) -> bytes:
    """A 48-bit RGB PNG written by hand (PIL cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def _class_folder(root: Path, per_class: int = 3) -> Path:
    for c, color in (("b_blue", (0, 0, 255)), ("a_red", (255, 0, 0))):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            (root / c / f"{i}.jpg").write_bytes(_jpeg(color))
    return root


def _report(summary) -> dict[str, str]:
    lines = Path(summary["report"]).read_text().splitlines()
    assert lines[0] == "name\treason"
    return dict(line.split("\t", 1) for line in lines[1:])


@pytest.fixture()
def broken(tmp_path) -> Path:
    """A flat folder of valid odd files and broken ones."""
    d = tmp_path / "broken"
    d.mkdir()
    good = _jpeg((10, 200, 30), size=(40, 30))
    (d / "good.jpg").write_bytes(good)
    (d / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (d / "zero.png").write_bytes(b"")
    (d / "text.png").write_text("this is not an image\n")
    (d / "one.png").write_bytes(_png(Image.new("RGB", (1, 1), (7, 8, 9))))
    grey16 = np.full((20, 20), 65535, dtype=np.uint16)
    grey16[:, :10] = 32896  # = 128 * 257
    (d / "grey16.png").write_bytes(_png(Image.fromarray(grey16)))
    (d / "rgb16.png").write_bytes(_png16_rgb(np.full((12, 12, 3), [65535, 32896, 0], dtype=np.uint16)))
    (d / "cmyk.jpg").write_bytes(_jpeg((0, 0, 0, 0), mode="CMYK"))  # no ink: white
    frames = [Image.new("P", (16, 16), i) for i in (1, 2)]
    for f in frames:
        f.putpalette([0, 0, 0, 250, 0, 0, 0, 250, 0] + [0] * 759)
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    (d / "anim.gif").write_bytes(buf.getvalue())
    (d / "rgba.png").write_bytes(_png(Image.new("RGBA", (8, 8), (0, 0, 0, 0))))
    (d / "notes.txt").write_text("ignored: not an image extension")
    return d


def test_broken_corpus_converts_odd_files_and_reports_each_broken_one(broken, tmp_path):
    s = prepare_dataset(broken, tmp_path / "out.h5", 16, workers=1, progress=False)
    report = _report(s)
    assert set(report) == {"truncated.jpg", "zero.png", "text.png"}
    assert report["zero.png"] == "empty file (0 bytes)"
    assert "not a recognised image format" in report["text.png"]
    assert "cannot decode" in report["truncated.jpg"]
    assert s["count"] == 7 and s["skipped"] == 3
    ds = open_dataset(tmp_path / "out.h5")
    names = ["anim.gif", "cmyk.jpg", "good.jpg", "grey16.png", "one.png", "rgb16.png", "rgba.png"]  # sorted
    imgs = {n: ds.images([i])[0] for i, n in enumerate(names)}
    assert ds.label_dim == 0 and ds.resolution == 16
    assert (imgs["one.png"] == [7, 8, 9]).all()  # 1x1 upsampled to a constant image
    assert (imgs["grey16.png"][:, :6] == 128).all() and (imgs["grey16.png"][:, 10:] == 255).all()
    assert (imgs["rgb16.png"] == [255, 128, 0]).all()  # 16-bit RGB: PIL keeps the high byte
    assert (imgs["cmyk.jpg"] >= 250).all()
    assert (imgs["anim.gif"] == [250, 0, 0]).all()  # first frame only
    assert (imgs["rgba.png"] == 255).all()  # transparent pixels composited on white


def test_on_error_fail_names_the_first_bad_file_and_writes_nothing(broken, tmp_path):
    with pytest.raises(ValueError, match=r"text\.png: not a recognised image format"):
        prepare_dataset(broken, tmp_path / "out.h5", 16, on_error="fail", workers=1, progress=False)
    assert not (tmp_path / "out.h5").exists()
    assert not list(tmp_path.glob(".out.h5*"))  # no temporary left behind


def test_killed_prepare_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    import edm2lib.data.prepare as prepare_mod

    src = _class_folder(tmp_path / "src", per_class=40)
    real, calls = prepare_mod.transform_image, {"n": 0}

    def dies_midway(*args):
        calls["n"] += 1
        if calls["n"] == 50:
            raise KeyboardInterrupt("killed")
        return real(*args)

    monkeypatch.setattr(prepare_mod, "transform_image", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(src, tmp_path / "out.h5", 8, workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_same_input_gives_byte_identical_file_with_any_worker_count(tmp_path):
    src = _class_folder(tmp_path / "src", per_class=20)
    (src / "a_red" / "big.jpg").write_bytes(_jpeg((1, 2, 3), size=(300, 200)))
    prepare_dataset(src, tmp_path / "a.h5", 32, workers=1, progress=False)
    prepare_dataset(src, tmp_path / "b.h5", 32, workers=2, progress=False)
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


def test_class_folders_give_labels_by_sorted_folder_name_and_zip_gives_the_same(tmp_path):
    src = _class_folder(tmp_path / "src")
    s = prepare_dataset(src, tmp_path / "dir.h5", 8, workers=1, progress=False)
    with zipfile.ZipFile(tmp_path / "src.zip", "w") as z:
        for p in sorted(src.rglob("*.jpg")):
            z.write(p, p.relative_to(src).as_posix())
    prepare_dataset(tmp_path / "src.zip", tmp_path / "zip.h5", 8, workers=2, progress=False)
    assert s["class_names"] == ["a_red", "b_blue"]
    a, b = open_dataset(tmp_path / "dir.h5"), open_dataset(tmp_path / "zip.h5")
    assert a.class_ids.tolist() == [0, 0, 0, 1, 1, 1] == b.class_ids.tolist()
    np.testing.assert_array_equal(a.images(range(6)), b.images(range(6)))
    assert (a.images([0])[0, :, :, 0] > 240).all() and (a.images([5])[0, :, :, 2] > 240).all()
    with h5py.File(tmp_path / "dir.h5") as f:
        assert f.attrs["count"] == 6 and f.attrs["transform"] == "center-crop-dhariwal"
        assert f.attrs["encoder"] == '{"kind": "pixels"}' and f["images"].chunks == (1, 8, 8, 3)


def test_labels_csv_reports_missing_images_unlabelled_images_and_duplicates(tmp_path):
    d = tmp_path / "flat"
    d.mkdir()
    for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        (d / n).write_bytes(_jpeg((50, 50, 50)))
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label\na.jpg,shoe\nb.jpg,bag\nb.jpg,shoe\nghost.jpg,bag\nd.jpg,bag\n")
    s = prepare_dataset(d, tmp_path / "out.h5", 8, labels=labels, workers=1, progress=False)
    report = _report(s)
    assert "no such image" in report["ghost.jpg"]
    assert "no label" in report["c.jpg"]
    assert "duplicate name: listed 2 times" in report["b.jpg"]
    ds = open_dataset(tmp_path / "out.h5")
    assert len(ds) == 2 and ds.class_names == ["bag", "shoe"] and ds.class_ids.tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"b\.jpg: duplicate name"):
        prepare_dataset(d, tmp_path / "f.h5", 8, labels=labels, on_error="fail", workers=1, progress=False)


def test_edm2_dataset_json_at_the_root_is_used_with_integer_labels(tmp_path):
    d = tmp_path / "flat"
    d.mkdir()
    for n in ("x.jpg", "y.jpg"):
        (d / n).write_bytes(_jpeg((90, 90, 90)))
    (d / "dataset.json").write_text(json.dumps({"labels": [["x.jpg", 3], ["y.jpg", 0]]}))
    prepare_dataset(d, tmp_path / "out.h5", 8, workers=1, progress=False)
    ds = open_dataset(tmp_path / "out.h5")
    assert ds.label_dim == 4 and ds.labels([0, 1]).argmax(1).tolist() == [3, 0]


def test_zip_with_a_json_labels_member_and_nested_class_folders(tmp_path):
    with zipfile.ZipFile(tmp_path / "l.zip", "w") as z:
        z.writestr("x/deep/1.jpg", _jpeg((0, 0, 0)))
        z.writestr("y/2.jpg", _jpeg((255, 255, 255)))
        z.writestr("meta/labels.json", json.dumps({"x/deep/1.jpg": "coat", "y/2.jpg": "bag"}))
        z.writestr("__MACOSX/y/._2.jpg", b"resource fork, not an image")  # macOS zip debris: ignored
    prepare_dataset(
        tmp_path / "l.zip", tmp_path / "a.h5", 8, labels="meta/labels.json", workers=1, progress=False
    )
    prepare_dataset(tmp_path / "l.zip", tmp_path / "b.h5", 8, workers=1, progress=False)
    a, b = open_dataset(tmp_path / "a.h5"), open_dataset(tmp_path / "b.h5")
    assert a.class_names == ["bag", "coat"] and a.class_ids.tolist() == [1, 0]
    assert b.class_names == ["x", "y"] and b.class_ids.tolist() == [0, 1]  # class = first path component
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as z:
        z.writestr("a.jpg", _jpeg((0, 0, 0)))
        z.writestr("labels.json", json.dumps({"labels": [["a.jpg", [0.5, 0.5]]]}))
    with pytest.raises(ValueError, match=r"entry \['a.jpg', \[0.5, 0.5\]\] should be \[name, class id"):
        prepare_dataset(tmp_path / "bad.zip", tmp_path / "c.h5", 8, labels="labels.json", progress=False)


def test_top_level_images_in_a_class_folder_layout_are_reported(tmp_path):
    src = _class_folder(tmp_path / "src", per_class=1)
    (src / "stray.jpg").write_bytes(_jpeg((1, 1, 1)))
    s = prepare_dataset(src, tmp_path / "out.h5", 8, workers=1, progress=False)
    assert s["count"] == 2 and "top level of a class-folder layout" in _report(s)["stray.jpg"]


def test_zip_with_duplicate_entries_skips_them_with_a_message(tmp_path):
    with zipfile.ZipFile(tmp_path / "dup.zip", "w") as z, pytest.warns(UserWarning, match="Duplicate"):
        z.writestr("a.jpg", _jpeg((0, 0, 0)))
        z.writestr("a.jpg", _jpeg((255, 255, 255)))
        z.writestr("b.jpg", _jpeg((0, 0, 0)))
    s = prepare_dataset(tmp_path / "dup.zip", tmp_path / "out.h5", 8, workers=1, progress=False)
    assert s["count"] == 1 and "duplicate name: stored 2 times" in _report(s)["a.jpg"]


def test_corrupt_zip_member_is_reported_and_the_rest_converted(tmp_path):
    noise = Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    with zipfile.ZipFile(tmp_path / "c.zip", "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.png", _png(noise))
        z.writestr("b.png", _png(noise))
    data = bytearray((tmp_path / "c.zip").read_bytes())
    at = data.find(b"b.png") + 100
    data[at : at + 40] = bytes(40)  # damage b.png's compressed bytes
    (tmp_path / "c.zip").write_bytes(bytes(data))
    s = prepare_dataset(tmp_path / "c.zip", tmp_path / "out.h5", 8, workers=1, progress=False)
    assert s["count"] == 1 and _report(s)["b.png"].startswith("cannot read: ")


def test_empty_folder_and_missing_source_raise_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files found"):
        prepare_dataset(tmp_path / "empty", tmp_path / "out.h5", 8, progress=False)
    with pytest.raises(FileNotFoundError, match="no such folder or zip"):
        prepare_dataset(tmp_path / "nope", tmp_path / "out.h5", 8, progress=False)
    with pytest.raises(ValueError, match="transform 'squash' is unknown"):
        prepare_dataset(tmp_path / "empty", tmp_path / "out.h5", 8, transform="squash", progress=False)


def test_center_crop_dhariwal_box_halves_then_bicubic_then_crops_the_centre():
    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, 40:] = 255  # left half black, right half white
    out = center_crop_dhariwal(arr, 16)  # 80x40 -> BOX 40x20 -> BICUBIC 32x16 -> centre 16x16
    assert out.shape == (16, 16, 3)
    assert (out[:, :6] == 0).all() and (out[:, 10:] == 255).all()
    flat = np.full((33, 70, 3), 77, dtype=np.uint8)
    assert (center_crop_dhariwal(flat, 16) == 77).all()


def test_pad_keeps_pixels_exact_and_center_crop_and_resize_give_the_target_size():
    grey = RNG.integers(0, 256, (28, 28), dtype=np.uint8)
    out = transform_image(grey, 32, "pad")
    assert (out[2:30, 2:30] == grey[:, :, None]).all() and out[:2].max() == 0
    for t in ("center-crop", "resize"):
        assert transform_image(_jpeg((5, 5, 5), size=(50, 30)), 12, t).shape == (12, 12, 3)


def test_max_images_keeps_the_first_names_in_sorted_order(tmp_path):
    src = _class_folder(tmp_path / "src")
    s = prepare_dataset(src, tmp_path / "out.h5", 8, max_images=4, workers=1, progress=False)
    assert s["count"] == 4 and open_dataset(tmp_path / "out.h5").class_ids.tolist() == [0, 0, 0, 1]


@pytest.mark.skipif(not all((DEBIAN_DIR / n).is_file() for n in FILES), reason="dataset-fashion-mnist absent")
def test_fashion_mnist_parses_and_prepares_by_padding_to_32(tmp_path):
    images, labels = load_fashion_mnist()
    assert images.shape == (70000, 28, 28) and np.bincount(labels).tolist() == [7000] * 10
    s = prepare_dataset(
        "fashion-mnist", tmp_path / "fm.h5", 32, transform="pad", max_images=20, progress=False
    )
    ds = open_dataset(tmp_path / "fm.h5")
    assert s["count"] == 20 and ds.label_dim == 10 and ds.class_names[9] == "Ankle boot"
    np.testing.assert_array_equal(ds.images(range(20))[:, 2:30, 2:30, 1], images[:20])
    assert ds.class_ids.tolist() == labels[:20].tolist()
