"""The data-specific classifier detector: training, file identity, class accuracy, refused mismatches, the
floor row, column honesty and class grids (procedural data: no data set needed)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from edm2lib.metrics import FeatureCollector, load_detector, reference_stats, score_samples
from edm2lib.metrics.classifier import (
    Classifier,
    accuracy,
    dataset_identity,
    load_classifier,
    train_classifier,
)
from edm2lib.pipeline import table


def squares(n: int, seed: int, size: int = 16, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n,size,size,3]: class c is a bright 5x5 square at a class-specific corner, on noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        top, left = (c // 2) * (size - 6) + 1, (c % 2) * (size - 6) + 1
        images[i, top : top + 5, left : left + 5] = 220
    return images, labels.astype(np.int64)


def images_h5(path, images, labels, source="procedural", transform="pad", split=None):
    with h5py.File(path, "w") as f:
        f["images"], f["labels"] = images, labels
        f.create_dataset("class_names", data=np.asarray(["a", "b", "c", "d"], dtype=object),
                         dtype=h5py.string_dtype())  # fmt: skip
        f.attrs.update(source=source, transform=transform, resolution=images.shape[1])
        if split:
            f.attrs["split"] = split
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A classifier trained on procedural squares and its file, with train/test images.h5 files."""
    tmp = tmp_path_factory.mktemp("clf")
    x, y = squares(512, 0)
    xt, yt = squares(256, 1)
    train_h5 = images_h5(tmp / "images.h5", x, y)
    test_h5 = images_h5(tmp / "heldout.h5", xt, yt, split="test")
    settings = {"seed": 0, "epochs": 3, "batch": 32, "lr": 0.003, "width": 8, "features": 16}
    record = table.train_detector(train_h5, test_h5, settings, tmp / "clf.safetensors", tmp / "clf.json")
    return tmp, record


def test_training_learns_the_classes_and_is_seeded():
    x, y = squares(384, 0)
    xt, yt = squares(256, 1)
    a = train_classifier(x, y, 4, seed=3, epochs=3, batch=32, lr=0.003, width=8, features=16, log=lambda _: 0)
    b = train_classifier(x, y, 4, seed=3, epochs=3, batch=32, lr=0.003, width=8, features=16, log=lambda _: 0)
    assert accuracy(a, xt, yt) > 0.9  # chance is 0.25
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_file_records_identity_and_loads_the_same_network(trained):
    tmp, record = trained
    net, meta = load_classifier(tmp / "clf.safetensors")
    assert meta["dataset"] == "procedural pad 16px" and meta["seed"] == 0
    assert meta["test_accuracy"] == record["test_accuracy"] > 0.9
    assert json.loads((tmp / "clf.json").read_text())["sha256"] == record["sha256"]
    det = load_detector("classifier", tmp / "clf.safetensors", device="cpu")
    assert det.identity["dataset"] == "procedural pad 16px" and det.identity["sha256"] == record["sha256"]
    x, _ = squares(8, 5)
    feats = det(x)
    assert feats.shape == (8, 16) and torch.equal(feats, net(torch.from_numpy(x).permute(0, 3, 1, 2).float()))


def test_damaged_tensors_are_refused(trained, tmp_path):
    tmp, _ = trained
    net, meta = load_classifier(tmp / "clf.safetensors")
    net.head.bias.data += 1
    from edm2lib.files import save_tensors

    save_tensors(tmp_path / "bad.safetensors", net.state_dict(), {k: v for k, v in meta.items()})
    with pytest.raises(ValueError, match="do not match their recorded sha256"):
        load_classifier(tmp_path / "bad.safetensors")


def test_missing_classifier_file_names_the_rule_that_makes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such file.*`detector` rule"):
        load_detector("classifier", tmp_path / "none.safetensors")
    with pytest.raises(FileNotFoundError, match=r"metrics\.weights\.classifier"):
        load_detector("classifier")


def test_class_accuracy_counts_conditioned_images_only(trained):
    tmp, _ = trained
    det = load_detector("classifier", tmp / "clf.safetensors", device="cpu")
    x, y = squares(64, 7)
    collect = FeatureCollector(det)
    collect(x[:32], None, y[:32])
    collect(x[32:], None, np.full(32, -1))  # unconditional: not counted
    s = collect.stats["classifier"]
    assert s.n == 64 and s.labelled == 32
    predicted = det.classify(det(x[:32])).numpy()
    assert s.class_accuracy == float(np.mean(predicted == y[:32]))
    wrong = FeatureCollector(det)
    wrong(x[:32], None, (y[:32] + 1) % 4)
    assert wrong.stats["classifier"].class_accuracy < s.class_accuracy


def test_score_gives_fd_and_class_accuracy_and_refuses_another_data_set(trained, tmp_path):
    tmp, _ = trained
    det = load_detector("classifier", tmp / "clf.safetensors", device="cpu")
    ref = tmp_path / "ref.npz"
    reference_stats(tmp / "images.h5", {"classifier": ref}, det, progress=False)
    scores = score_samples(str(tmp / "heldout.h5"), {"classifier": ref}, det, progress=False)
    assert scores["fd_classifier_min"] > 0 and scores["class_acc_mean"] > 0.9
    # a classifier of another data set: the statistics are refused, the message names both data sets
    x, y = squares(256, 2)
    other = images_h5(tmp_path / "other.h5", x, y, transform="resize")
    xt, yt = squares(64, 3)
    other_test = images_h5(tmp_path / "other-test.h5", xt, yt, transform="resize")
    settings = {"seed": 1, "epochs": 1, "batch": 64, "lr": 0.003, "width": 4, "features": 8}
    table.train_detector(other, other_test, settings, tmp_path / "o.safetensors", tmp_path / "o.json")
    det2 = load_detector("classifier", tmp_path / "o.safetensors", device="cpu")
    with pytest.raises(ValueError, match=r"dataset='procedural pad 16px'.*dataset='procedural resize 16px'"):
        score_samples(str(tmp / "heldout.h5"), {"classifier": ref}, det2, progress=False)
    with pytest.raises(ValueError, match=r"procedural pad 16px.*o.safetensors.*procedural resize 16px"):
        table.check_dataset(det2, tmp / "images.h5")


def test_a_test_split_of_another_data_set_is_refused_for_training(trained, tmp_path):
    tmp, _ = trained
    x, y = squares(32, 2)
    other = images_h5(tmp_path / "other.h5", x, y, source="elsewhere")
    with pytest.raises(ValueError, match="is not a split of"):
        table.train_detector(tmp / "images.h5", other, {}, tmp_path / "x.safetensors", tmp_path / "x.json")
    assert dataset_identity(other) == "elsewhere pad 16px"


def _metrics_json(path, sigma_rel, fd, acc):
    record = {
        "run": "demo", "model": "edm2-demo[model_channels=16]", "nimg": 1024, "sigma_rel": sigma_rel,
        "guidance": "ag", "w": 2.0, "guide": "", "interval": "", "steps": 8, "seeds": "0-511", "block": 0,
        "nfe": 30, "images": 512, "random_init": False, "fid": None, "fd_dinov2": None,
        "fd_classifier": fd, "class_acc": acc, "fid_detector": "", "fd_dinov2_detector": "",
        "fd_classifier_detector": "edm2lib-cnn2 clf.safetensors sha256:0123",
    }  # fmt: skip
    path.write_text(json.dumps(record))
    return path


def test_table_has_only_computed_metric_columns_and_a_floor_row(tmp_path):
    paths = [_metrics_json(tmp_path / f"{i}.json", s, fd, acc)
             for i, (s, fd, acc) in enumerate([(0.05, 3.0, 0.6), (0.10, 2.0, 0.7)])]  # fmt: skip
    floor = _metrics_json(tmp_path / "floor.json", 0.0, 0.5, 0.9)
    record = json.loads(floor.read_text())
    record.update(run=table.FLOOR_RUN, nimg="", sigma_rel="", guidance="", w="")
    floor.write_text(json.dumps(record))
    rows = table.write_results(paths, tmp_path / "t.csv", tmp_path / "p.png", [floor])
    header, *lines = (tmp_path / "t.csv").read_text().splitlines()
    columns = header.split(",")
    assert "fd_classifier" in columns and "class_acc" in columns
    assert not {"fid", "fd_dinov2", "fid_detector", "paper_fid", "fd_dinov2_mean"} & set(columns)
    assert [r["run"] for r in rows] == ["demo", "demo", table.FLOOR_RUN] and len(lines) == 3
    assert rows[-1]["fd_classifier"] == 0.5 and rows[1]["class_acc"] == 0.7
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_class_grid_puts_each_class_in_its_own_column(tmp_path):
    x, y = squares(40, 4)
    samples = tmp_path / "block0.h5"
    with h5py.File(samples, "w") as f:
        f["images"], f["labels"], f["seeds"] = x, y, np.arange(40)
    data = images_h5(tmp_path / "images.h5", x, y)
    shown = table.plot_class_grid(samples, data, tmp_path / "g.png", per_class=3)
    assert shown == sum(min(3, int((y == c).sum())) for c in range(4))
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_classifier_resizes_other_sizes_and_rejects_bad_resolutions():
    net = Classifier(resolution=16, width=4, features=8)
    assert net(torch.zeros(2, 3, 20, 20)).shape == (2, 8)
    with pytest.raises(ValueError, match="multiple of 4"):
        Classifier(resolution=18)
