"""FID and FD-DINOv2 as in the EDM2 paper: detectors, weights, feature statistics, Fréchet distance."""

from edm2lib.metrics.detectors import Detector, as_nchw_uint8, load_detector, load_nvidia_inception_pkl
from edm2lib.metrics.frechet import frechet_distance, frechet_distance_sqrtm
from edm2lib.metrics.scoring import (
    FeatureCollector,
    compute_stats,
    load_references,
    reference_stats,
    score_samples,
    score_stats,
)
from edm2lib.metrics.stats import FeatureStats, load_stats, save_stats
from edm2lib.metrics.weights import WEIGHTS, cache_dir, resolve_weights

__all__ = [
    "WEIGHTS",
    "Detector",
    "FeatureCollector",
    "FeatureStats",
    "as_nchw_uint8",
    "cache_dir",
    "compute_stats",
    "frechet_distance",
    "frechet_distance_sqrtm",
    "load_detector",
    "load_nvidia_inception_pkl",
    "load_references",
    "load_stats",
    "reference_stats",
    "resolve_weights",
    "save_stats",
    "score_samples",
    "score_stats",
]
