"""`TrainConfig`: every training setting, built from a dict and validated before any compute is spent."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edm2lib.nn.ladder import LETTERS

DTYPES = ("fp32", "bf16", "fp16")
REQUEUE = ("auto", "always", "never")
EMAS = ("power", "traditional")
TRADITIONAL_KEYS = ("ema", "ema_halflife_nimg", "ema_rampup_ratio")  # identity keys only of a traditional EMA
_MI = 2**20

# keys that change how training runs but not what it computes (docs/training.md: resume); `duration` is not
# identity either: the lr schedule does not depend on it, so a longer run continues from the last checkpoint
RUNTIME_KEYS = frozenset(
    {"run_dir", "device", "batch_gpu", "checkpoint_nimg", "checkpoint_minutes", "keep_checkpoints",
     "status_nimg", "requeue", "deterministic", "duration", "compile"}
)  # fmt: skip


@dataclasses.dataclass
class TrainConfig:
    """Training settings; time is counted in images (nimg) everywhere, as in the paper."""

    data: str  # images.h5 (pixel models) or latents.h5 (latent models)
    run_dir: str  # checkpoints/, snapshots/, stats.jsonl and log.txt go here
    preset: str | None = None  # edm2lib.nn.presets name: its network and training values are the defaults
    network: dict = dataclasses.field(default_factory=dict)  # Precond keywords, merged over the preset's
    ablation: str = "G"  # ladder config A..G (EDM2 Table 1): network switches and training recipe defaults
    batch: int = 2048  # global batch (images per optimizer step, all ranks and rounds together)
    batch_gpu: int | None = None  # micro-batch per rank and round; None: batch / world (no accumulation)
    duration: int = 2048 * _MI  # training length in images
    lr_ref: float = 0.01  # alpha_ref (EDM2 eq. 16)
    t_ref: float = 70000 * 2048  # images before the lr decays (EDM2 Eq. 67; 70k batches); inf: never
    warmup: int = 10_000_000  # linear lr warm-up length in images (EDM2 Fig. 22)
    P_mean: float = -0.4  # mean of ln(sigma) in training (EDM2 App. B.2, Fig. 22)
    P_std: float = 1.0  # std of ln(sigma) in training (EDM2 App. B.2, Fig. 22)
    sigma_rels: tuple[float, ...] = (0.05, 0.10)  # power-function EMA widths tracked online (EDM2 sec. 3)
    ema: str = "power"  # 'power' (EDM2 Sec. 3, post hoc) or 'traditional' (EDM's half-life EMA, CONFIG A)
    ema_halflife_nimg: float = 50_000_000  # traditional EMA half-life in images (EDM2 Fig. 16: 50 Mimg)
    ema_rampup_ratio: float | None = 0.05  # traditional EMA: half-life <= ratio x nimg (EDM); None: no ramp
    snapshot_nimg: int = 8 * _MI  # EMA snapshot interval in images (0: only at the end)
    checkpoint_nimg: int = 128 * _MI  # checkpoint interval in images (0: none), besides the time interval
    checkpoint_minutes: float = 10.0  # checkpoint at least this often (0: no time-based checkpoints)
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    status_nimg: int = 128 * 2**10  # status line interval in images
    telemetry_nimg: int = 0  # magnitude telemetry interval in images (0: off; EDM2 App. A.6, Fig. 15)
    telemetry_probe: int = 4096  # probe examples per telemetry point (the paper uses 4096)
    seed: int = 0  # network init, data order and every per-step draw derive from it
    device: str = "auto"  # auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda, cuda:N
    dtype: str = (
        "fp32"  # activations: fp32, bf16 or fp16 (fp16 computes in fp32 on CPU, as the official code)
    )
    adam_betas: tuple[float, float] = (0.9, 0.99)  # Adam beta1, beta2 (EDM2 App. B.2; A: 0.999)
    loss_scaling: float = 1.0  # plain loss multiplier, gradients not unscaled (docs/official.md)
    deterministic: bool = False  # torch deterministic algorithms (tests, exact-resume checks)
    requeue: str = "auto"  # on preemption under SLURM: scontrol requeue (auto: if the job is requeueable)
    compile: bool | str = "auto"  # torch.compile the loss step: true, false or auto (on CUDA only)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a plain dict (YAML/JSON) over the preset's values; unknown keys are rejected by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training config key(s) {unknown}; known keys: {sorted(known)}")
        missing = [k for k in ("data", "run_dir") if k not in values]
        if missing:
            raise ValueError(f"training config is missing required key(s) {missing}")
        values = dict(values)
        letter = values.get("ablation", "G")
        if letter not in LETTERS:
            raise ValueError(f"config key 'ablation' must be one of {', '.join(LETTERS)}, got {letter!r}")
        if values.get("preset") is not None:
            from edm2lib.nn.presets import get_preset
            from edm2lib.training.recipes import recipe

            preset = get_preset(values["preset"], config=letter)
            network = {**preset.network, **(values.get("network") or {})}
            values = {**recipe(letter, preset.training), **values, "network": network}
        elif letter != "G" and isinstance(values.get("network"), dict):
            values["network"] = {"ablation": letter, **values["network"]}
        if values.get("adam_betas") is not None:
            values["adam_betas"] = tuple(float(b) for b in values["adam_betas"])
        if values.get("sigma_rels") is not None:
            values["sigma_rels"] = tuple(float(s) for s in values["sigma_rels"])
        cfg = cls(**values)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a YAML or JSON file (JSON is YAML)."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: training config not found")
        values = yaml.safe_load(path.read_text())
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a training config must be a mapping of keys to values")
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (round-trips through `from_dict`)."""
        d = dataclasses.asdict(self)
        d["sigma_rels"] = list(self.sigma_rels)
        d["adam_betas"] = list(self.adam_betas)
        return json.loads(json.dumps(d))

    def identity(self) -> dict[str, Any]:
        """Every resolved key that changes what training computes (all keys but `RUNTIME_KEYS`)."""
        return identity_of(self.to_dict())

    def identity_hash(self) -> str:
        """16 hex digits of the SHA-256 of `identity()` (recorded in checkpoints, snapshots, trained.json)."""
        return identity_hash(self.identity())

    def validate(self) -> None:
        """Checks that need neither the data set nor the process group."""
        ints = ["batch", "duration", "warmup", "snapshot_nimg", "checkpoint_nimg", "keep_checkpoints"]
        for key in [*ints, "status_nimg", "seed", "telemetry_nimg", "telemetry_probe"]:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"config key '{key}' must be a non-negative integer, got {value!r}")
        for key in ("batch", "duration", "status_nimg", "keep_checkpoints"):
            if getattr(self, key) == 0:
                raise ValueError(f"config key '{key}' must be positive, got 0")
        if self.batch_gpu is not None and (not isinstance(self.batch_gpu, int) or self.batch_gpu <= 0):
            raise ValueError(
                f"config key 'batch_gpu' must be a positive integer or null, got {self.batch_gpu!r}"
            )
        for key in ("duration", "snapshot_nimg", "checkpoint_nimg", "status_nimg", "telemetry_nimg"):
            if getattr(self, key) % self.batch:
                raise ValueError(
                    f"config key '{key}' = {getattr(self, key)} is not a multiple of the batch {self.batch}"
                )
        for key in ("lr_ref", "P_std", "loss_scaling"):
            if not 0 < getattr(self, key) < math.inf:
                raise ValueError(
                    f"config key '{key}' must be positive and finite, got {getattr(self, key)!r}"
                )
        if not self.t_ref > 0:
            raise ValueError(f"config key 't_ref' must be positive (inf: no decay), got {self.t_ref!r}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(
                f"config key 'adam_betas' must be two values in [0, 1), got {list(self.adam_betas)}"
            )
        if self.ablation not in LETTERS:
            raise ValueError(
                f"config key 'ablation' must be one of {', '.join(LETTERS)}, got {self.ablation!r}"
            )
        if isinstance(self.network, dict) and self.network.get("ablation", "G") != self.ablation:
            raise ValueError(
                f"config key 'network.ablation' = {self.network['ablation']!r} contradicts 'ablation' = "
                f"{self.ablation!r}; set only 'ablation' (one of {', '.join(LETTERS)})"
            )
        if not all(0 < s < math.sqrt(1 / 12) for s in self.sigma_rels) or not self.sigma_rels:
            raise ValueError(
                f"config key 'sigma_rels' must be values in (0, 0.2887), got {list(self.sigma_rels)}"
            )
        if self.ema not in EMAS:
            raise ValueError(f"config key 'ema' must be one of {EMAS}, got {self.ema!r}")
        if not 0 < self.ema_halflife_nimg < math.inf:
            raise ValueError(
                f"config key 'ema_halflife_nimg' must be positive and finite, got {self.ema_halflife_nimg!r}"
            )
        if self.ema_rampup_ratio is not None and not 0 < self.ema_rampup_ratio < math.inf:
            raise ValueError(
                f"config key 'ema_rampup_ratio' must be positive or null, got {self.ema_rampup_ratio!r}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"config key 'dtype' must be one of {DTYPES}, got {self.dtype!r}")
        if self.requeue not in REQUEUE:
            raise ValueError(f"config key 'requeue' must be one of {REQUEUE}, got {self.requeue!r}")
        if not (isinstance(self.compile, bool) or self.compile == "auto"):
            raise ValueError(f"config key 'compile' must be true, false or auto, got {self.compile!r}")
        if not self.checkpoint_minutes >= 0:
            raise ValueError(f"config key 'checkpoint_minutes' must be >= 0, got {self.checkpoint_minutes!r}")
        if not isinstance(self.network, dict):
            raise ValueError(
                f"config key 'network' must be a mapping of Precond keywords, got {self.network!r}"
            )
        if "model_channels" not in self.network:
            raise ValueError(
                "training config needs a 'preset' or 'network' keywords including 'model_channels'"
            )
        if not str(self.device).startswith(("auto", "cpu", "cuda")):
            raise ValueError(f"config key 'device' must be auto, cpu or cuda[:N], got {self.device!r}")

    def rounds(self, world_size: int) -> int:
        """Gradient-accumulation rounds per step; checks batch = batch_gpu x rounds x world_size."""
        batch_gpu = self.batch_gpu or self.batch // world_size
        if batch_gpu == 0 or self.batch % (world_size * batch_gpu):
            raise ValueError(
                f"batch {self.batch} is not divisible by world size {world_size} x batch_gpu {batch_gpu}; "
                f"choose batch_gpu so that batch / (world size x batch_gpu) is a whole number of rounds"
            )
        return self.batch // (world_size * batch_gpu)

    def micro_batch(self, world_size: int) -> int:
        """Examples per rank and round."""
        return self.batch // (world_size * self.rounds(world_size))

    def network_kwargs(self, dataset: Any) -> dict[str, Any]:
        """`Precond` keywords: `network` with the data set's shape filled in and `dtype` applied.

        A network whose resolution, channels or label_dim disagree with the data set is a ValueError (a
        label_dim of 0 trains an unconditional model on a labelled data set).
        """
        kwargs = dict(self.network)
        actual = {"img_resolution": dataset.resolution, "img_channels": dataset.channels}
        actual["label_dim"] = 0 if kwargs.get("label_dim") == 0 else dataset.label_dim
        source = f"preset '{self.preset}' / network" if self.preset else "network"
        for key, value in actual.items():
            if kwargs.setdefault(key, value) != value:
                raise ValueError(
                    f"data set {self.data} has {key} {value} but the config ({source}.{key}) asks for "
                    f"{kwargs[key]}; use a matching data set or set network.{key}"
                )
        if "compute_dtype" not in self.network:
            kwargs["use_fp16"] = self.dtype == "fp16"  # the official rule: float16 only on CUDA
            if self.dtype == "bf16":
                kwargs["compute_dtype"] = "bfloat16"
        return kwargs


def identity_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """The identity keys of a `TrainConfig.to_dict()` (e.g. the config stored in a checkpoint); the
    traditional-EMA keys count only for a traditional EMA, so power-EMA identities predate them."""
    skip = RUNTIME_KEYS | (set() if config.get("ema", "power") == "traditional" else set(TRADITIONAL_KEYS))
    return {k: v for k, v in sorted(config.items()) if k not in skip}


def identity_hash(identity: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of a canonical JSON form of `identity`."""
    import hashlib

    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def identity_changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """`key: old -> new` for every identity key that differs between two `identity()` dicts."""
    keys = sorted(set(saved) | set(now))
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]
