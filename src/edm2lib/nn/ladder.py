"""The ablation ladder of EDM2 Table 1: each of CONFIG A..G as one frozen set of network switches."""

from __future__ import annotations

import dataclasses

LETTERS = ("A", "B", "C", "D", "E", "F", "G")

# Allowed values of every string switch, for validation and error messages.
_CHOICES = {
    "norm": ("group", "rms", "none"),
    "init": ("uniform", "normal"),
    "weight_norm": ("none", "on_use", "forced"),
    "conditioning": ("scale_shift", "scale"),
    "sum": ("plain", "mp"),
    "cat": ("plain", "mp"),
    "silu": ("plain", "mp"),
    "attention": ("standard", "cosine"),
    "resample": ("residual", "main"),
    "embedding": ("positional", "fourier", "mp_fourier"),
}


@dataclasses.dataclass(frozen=True)
class Switches:
    """Which variant of every part of the U-Net a config uses; docs/network.md describes each part."""

    norm: str  # residual-branch and output norm: 'group' (mean + affine), 'rms' (EDM2 Eq. 29), 'none'
    pixel_norm: bool  # PixelNorm at the start of every encoder block (EDM2 Eq. 30)
    bias: bool  # additive biases in every conv, linear and group norm
    init: str  # 'uniform' U(+-1/sqrt(fan_in)) (EDM's "He uniform") or 'normal' N(0, 1)
    zero_init: bool  # the last conv of each residual branch, the attention proj and the out conv start at 0
    weight_norm: str  # 'none', 'on_use' (EDM2 Eq. 46) or 'forced' (EDM2 Eq. 66 on top of Eq. 46)
    conditioning: str  # 'scale_shift' (h * (1 + s) + b) or 'scale' (h * (1 + s))
    gains: bool  # learned scalar gains, init 0, on the conditioning and the output (EDM2 Eq. 104)
    sum: str  # residual, attention and embedding joins: 'plain' + or 'mp' (EDM2 Eq. 88)
    cat: str  # U-Net skip joins: 'plain' concatenation or 'mp' (EDM2 Eq. 103)
    silu: str  # 'plain' SiLU or 'mp' (EDM2 Eq. 81)
    attention: str  # 'standard' (group norm, dot product in float32) or 'cosine' (EDM2 Eqs. 30-34)
    resample: str  # up/down-sampling 'residual' (inside the branch, ADM) or 'main' (main path, block start)
    embedding: str  # noise features: 'positional' (ADM), 'fourier' (EDM2 Eq. 35), 'mp_fourier' (EDM2 Eq. 75)
    emb_linears: int  # linear layers after the noise features: 2 (ADM) or 1 (EDM2 App. B.6)
    out_silu: bool  # SiLU before the output conv
    ones_channel: bool  # a constant-1 channel appended to the input (EDM2 App. B.3)
    unit_label: bool  # the one-hot label scaled by sqrt(label_dim) to unit RMS (EDM2 App. B.3)
    learned_weighting: bool  # the log-variance head u(sigma) of the loss (EDM2 Eq. 21)
    clip_act: float | None  # clamp every block's output to +-clip_act (None: no clamp)
    attn_resolutions: tuple[int, ...]  # default self-attention resolutions for a 64x64 input

    def __post_init__(self) -> None:
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"network switch {key}={getattr(self, key)!r} is not one of {allowed}")
        if self.emb_linears not in (1, 2):
            raise ValueError(f"network switch emb_linears={self.emb_linears!r} is not one of (1, 2)")
        if self.zero_init and self.weight_norm != "none":
            # Eq. 46 divides by the weight norm: a zero-initialised weight has no direction to normalise.
            raise ValueError(
                f"network switch weight_norm={self.weight_norm!r} cannot work with zero_init=True "
                "(configs A, B); allowed with zero_init: ('none',)"
            )

    @property
    def magnitude_preserving_layers(self) -> bool:
        """Whether learned layers normalise their weights and scale by 1/sqrt(fan_in) (EDM2 Eq. 47)."""
        return self.weight_norm != "none"


_A = Switches(  # EDM2 Sec. 2, App. B.1: the ADM U-Net as EDM implements it
    norm="group",
    pixel_norm=False,
    bias=True,
    init="uniform",
    zero_init=True,
    weight_norm="none",
    conditioning="scale_shift",
    gains=False,
    sum="plain",
    cat="plain",
    silu="plain",
    attention="standard",
    resample="residual",
    embedding="positional",
    emb_linears=2,
    out_silu=True,
    ones_channel=False,
    unit_label=False,
    learned_weighting=False,
    clip_act=None,
    attn_resolutions=(32, 16, 8),
)
_B = dataclasses.replace(_A, learned_weighting=True, attn_resolutions=(16, 8))  # EDM2 App. B.2
_C = dataclasses.replace(  # EDM2 App. B.3: architectural streamlining
    _B,
    norm="rms",
    bias=False,
    zero_init=False,
    conditioning="scale",
    attention="cosine",
    embedding="fourier",
    ones_channel=True,
    unit_label=True,
)
_D = dataclasses.replace(_C, init="normal", weight_norm="on_use")  # EDM2 App. B.4: MP learned layers
_E = dataclasses.replace(_D, weight_norm="forced")  # EDM2 App. B.5: forced weight normalisation
_F = dataclasses.replace(  # EDM2 App. B.6: group norms removed, four simplifications
    _E, norm="none", pixel_norm=True, resample="main", emb_linears=1, out_silu=False
)
_G = dataclasses.replace(  # EDM2 App. B.7: MP fixed-function layers
    _F, sum="mp", cat="mp", silu="mp", embedding="mp_fourier", gains=True, clip_act=256
)

LADDER: dict[str, Switches] = dict(zip(LETTERS, [_A, _B, _C, _D, _E, _F, _G]))


def switches(letter: str) -> Switches:
    """The switches of CONFIG `letter` ('A'..'G') of EDM2 Table 1."""
    if letter not in LADDER:
        raise ValueError(f"unknown config letter {letter!r}; allowed: {', '.join(LETTERS)}")
    return LADDER[letter]
