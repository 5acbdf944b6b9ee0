"""The library-free safetensors reader and header writer agree with the safetensors package."""

import json
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from edm2lib.phema import tensorfile
from edm2lib.phema.tensorfile import TensorFile

TENSORS = {
    "a.weight": torch.randn(7, 5),
    "b.half": torch.randn(3, 4, 2).half(),
    "c.bf16": torch.randn(9).bfloat16(),
    "d.steps": torch.tensor(12345678901, dtype=torch.int64),  # 0-d
    "e.mask": torch.tensor([True, False, True]),
    "f.empty": torch.zeros(0, 3),
}


@pytest.fixture
def stored(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file(TENSORS, str(path), metadata={"k": "v"})
    return path


def _raw(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


def test_layout_and_every_tensor_read_whole_and_in_pieces(stored):
    f = TensorFile(stored)
    with safe_open(str(stored), framework="pt") as ref:
        names = ref.keys()  # a safe_open handle is not a mapping
        assert f.tensors == {
            k: (ref.get_slice(k).get_dtype(), list(ref.get_slice(k).get_shape())) for k in names
        }
    for name, value in TENSORS.items():
        want = _raw(value)
        assert np.array_equal(f.read(name, 0, np.empty(want.size, np.uint8)), want), name
    itemsize = 2
    piece = f.read("b.half", 5, np.empty(7, np.float16))  # elements 5..11 of the flattened tensor
    assert np.array_equal(piece, TENSORS["b.half"].reshape(-1)[5:12].numpy())
    assert np.array_equal(
        f.read("c.bf16", 2, np.empty(3, np.uint16)).view(np.uint8),
        _raw(TENSORS["c.bf16"])[2 * itemsize : 5 * itemsize],
    )
    f.close()


def test_threads_read_one_file_at_once(stored):
    f = TensorFile(stored)
    want = TENSORS["a.weight"].reshape(-1).numpy()
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: f.read("a.weight", i, np.empty(5, np.float32)), range(0, 35, 5)))
    assert np.array_equal(np.concatenate(got), want)


def test_a_written_header_with_appended_data_is_a_valid_file(tmp_path):
    layout = [("x", "F32", [2, 3]), ("y", "I64", []), ("z", "F16", [4])]
    values = {"x": np.arange(6, dtype=np.float32), "y": np.array([7], np.int64), "z": np.ones(4, np.float16)}
    header, nbytes = tensorfile.header(layout, {"meta": json.dumps({"a": 1})})
    assert len(header) % 8 == 0 and nbytes == 6 * 4 + 8 + 4 * 2
    path = tmp_path / "w.safetensors"
    path.write_bytes(header + b"".join(values[n].tobytes() for n, _, _ in layout))
    got = load_file(path)
    assert torch.equal(got["x"], torch.arange(6.0).reshape(2, 3)) and got["y"].item() == 7
    with safe_open(str(path), framework="pt") as ref:
        assert json.loads(ref.metadata()["meta"]) == {"a": 1}


def test_broken_files_are_refused_naming_the_file(stored, tmp_path):
    def write(name, data):
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    def with_header(text: bytes) -> bytes:
        return struct.pack("<Q", len(text)) + text

    entry = b'{"w":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}'
    cases = {
        "short": (b"\x01\x02", "not a safetensors file"),
        "huge": (struct.pack("<Q", 1 << 40) + b"{}", "not a safetensors file"),
        "text": (with_header(b"not json"), "header is not JSON"),
        "entry": (with_header(b'{"w": {"a": 1}}'), "header entry 'w' is malformed"),
        "dtype": (with_header(entry) + bytes(8), "dtype C64"),
        "truncated": (stored.read_bytes()[:-8], "do not fit"),
    }
    for name, (data, message) in cases.items():
        path = write(f"{name}.safetensors", data)
        with pytest.raises(ValueError, match=rf"{path.name}: .*{message}"):
            TensorFile(path)


def test_a_strided_buffer_is_refused_not_silently_filled_elsewhere(stored):
    f = TensorFile(stored)
    with pytest.raises(ValueError, match="must be contiguous"):
        f.read("a.weight", 0, np.empty((5, 2), np.float32)[:, 0])
