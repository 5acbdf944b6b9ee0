"""edm2lib: magnitude-preserving EDM2 diffusion networks, training, post-hoc EMA, sampling and metrics.

The names below are imported lazily, so `import edm2lib` stays cheap and `edm2lib.Precond` still works.
Engines share their module's name and are reached through it: `edm2lib.phema.reconstruct.reconstruct`,
`edm2lib.sampling.generate.generate`, `edm2lib.training.train`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "edm2lib.nn.layers": ["normalize", "mp_silu", "mp_sum", "mp_cat", "resample", "MPFourier", "MPConv"],
    "edm2lib.nn.networks": ["Block", "UNet", "Precond"],
    "edm2lib.nn.presets": ["PRESETS", "get_preset"],
    "edm2lib.training.loss": ["edm2_loss"],
    "edm2lib.files": ["save_network", "load_network", "read_network_meta"],
    "edm2lib.phema.profiles": [
        "sigma_rel_to_gamma",
        "gamma_to_sigma_rel",
        "posthoc_coefficients",
        "profile_error",
    ],
    "edm2lib.phema.ema": ["PowerFunctionEMA"],
    "edm2lib.sampling.heun": ["edm_sampler", "karras_sigmas"],
    "edm2lib.metrics": ["frechet_distance", "load_detector"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'edm2lib' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
