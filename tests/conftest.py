"""Shared test fixtures: the official reference vectors and deterministic torch settings."""

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = ROOT.parent / "shared" / "reference"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """`../shared/reference/` beside the checkout (CI lays it out the same way)."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference vectors not found at {REFERENCE_DIR}")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def tiny_reference(reference_dir: Path) -> dict:
    """The official tiny network's config, weights, inputs and outputs (edm2-net-tiny.pt)."""
    return torch.load(reference_dir / "edm2-net-tiny.pt", weights_only=True)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks run fastest on one thread (and so do the rank processes they spawn)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
