"""Shared test fixtures: the vendored official reference vectors (tests/data/) and deterministic torch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(__file__).resolve().parent / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))


def vendored(name: str) -> Path:
    """Path of a vendored test file; a missing one fails the test (never skips) and names the path."""
    path = DATA_DIR / name
    if not path.is_file():
        pytest.fail(f"vendored test file {path} is missing; restore it from git (see tests/data/README.md)")
    return path


def _sha256(t: torch.Tensor) -> str:
    """Same hash as tests/data/make_slim_reference.py: dtype, shape and raw bytes."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _sample_index(numel: int, count: int) -> torch.Tensor:
    """The gradient sample's flat indices, as recorded in the metadata's `grad_sample.index`."""
    if numel <= count:
        return torch.arange(numel)
    return torch.arange(count) * (numel - 1) // (count - 1)


def _official_state_dict(meta: dict, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official weights: edm2lib's init under the reference seed plus the stored perturbed gains,
    checked tensor by tensor against the SHA-256 of the official file."""
    from edm2lib.nn.networks import Precond

    with torch.random.fork_rng():
        torch.manual_seed(meta["seed"])
        state = Precond(**meta["config"]).state_dict()
    for key in state:
        if f"gain/{key}" in tensors:
            state[key] = tensors[f"gain/{key}"].reshape(state[key].shape).clone()
    if list(state) != list(meta["state_dict_sha256"]):
        pytest.fail("rebuilt state-dict keys differ from the official ones in tests/data/edm2-net-tiny.json")
    for key, value in state.items():
        if _sha256(value) != meta["state_dict_sha256"][key]:
            seed = meta["seed"]
            pytest.fail(f"weights rebuilt under torch.manual_seed({seed}) differ from the official '{key}'")
    return state


def _after_forward(state: dict, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official weights after one train-mode forward: each output channel times its stored factor."""
    out = {}
    for key, value in state.items():
        factor = tensors.get(f"normalize_factor/{key}")
        if factor is None:
            out[key] = value
        else:
            out[key] = (value.double() * factor.reshape(-1, *[1] * (value.ndim - 1))).float()
    return out


def _grads(meta: dict, state: dict, tensors: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per parameter: a strided sample of the official gradient (`index`, `value`), max |g|, L2 norm."""
    count = meta["grad_sample"]["count"]
    return {
        name: {
            "index": _sample_index(state[name].numel(), count),
            "value": tensors[f"grad_sample/{name}"],
            "absmax": tensors[f"grad_absmax/{name}"].item(),
            "norm": tensors[f"grad_norm/{name}"].item(),
        }
        for name in meta["param_names"]
    }


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """tests/data/: the vendored reference vectors (phema-coeffs.json, edm2-net-tiny.*)."""
    vendored("phema-coeffs.json")
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_reference() -> dict:
    """The official tiny network's config, weights (rebuilt, hash-checked), inputs and outputs."""
    meta = json.loads(vendored("edm2-net-tiny.json").read_text())
    tensors = load_file(vendored("edm2-net-tiny.safetensors"))
    state = _official_state_dict(meta, tensors)
    ref = {k: v for k, v in meta.items() if k not in ("state_dict_sha256", "grad_sample")}
    ref.update({k: v for k, v in tensors.items() if "/" not in k})
    ref["state_dict"] = state
    ref["train_state_dict_after_forward"] = _after_forward(state, tensors)
    ref["grads"] = _grads(meta, state, tensors)
    return ref


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks run fastest on one thread (and so do the rank processes they spawn)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
