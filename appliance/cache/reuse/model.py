"""The learned part of the reuse decision: a logistic model over :class:`PairFeatures`.

The weights are a data file (``data/reuse_model.json``) written by
``bench/reuse_train.py`` (deterministic, a few minutes on a laptop CPU), with the
provenance of its training data and its out-of-sample figures. Applying it is one dot
product: no library at run time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from appliance.cache.reuse.features import PairFeatures
from appliance.errors import ConfigError

__all__ = ["MODEL_PATH", "ReuseModel", "default_model"]

MODEL_PATH = Path(__file__).with_name("data") / "reuse_model.json"
FORMAT = 1


@dataclass(frozen=True)
class ReuseModel:
    """Standardise, weigh, squash: the probability that a pair may share a clip."""

    features: tuple[str, ...]
    mean: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]
    coef: npt.NDArray[np.float64]
    intercept: float
    threshold: float  # the shipped decision threshold on the probability
    provenance: dict[str, Any] = field(default_factory=dict)

    def probability(self, features: PairFeatures) -> float:
        z = (features.vector() - self.mean) / self.scale
        logit = float(z @ self.coef) + self.intercept
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, logit))))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "features": list(self.features),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "threshold": self.threshold,
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReuseModel:
        if data.get("format") != FORMAT:
            raise ConfigError(f"reuse model format {data.get('format')!r}, expected {FORMAT}")
        features = tuple(data["features"])
        if list(features) != PairFeatures.names():
            raise ConfigError(
                f"reuse model was trained on features {list(features)}, "
                f"this version computes {PairFeatures.names()}: retrain it (bench/reuse_train.py)"
            )
        return cls(
            features=features,
            mean=np.asarray(data["mean"], dtype=np.float64),
            scale=np.asarray(data["scale"], dtype=np.float64),
            coef=np.asarray(data["coef"], dtype=np.float64),
            intercept=float(data["intercept"]),
            threshold=float(data["threshold"]),
            provenance=dict(data.get("provenance", {})),
        )

    @classmethod
    def load(cls, path: Path) -> ReuseModel:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the reuse model {path}: {exc}") from exc
        return cls.from_json(data)


@cache
def default_model() -> ReuseModel:
    """The shipped model (loaded once per process; it is immutable)."""
    return ReuseModel.load(MODEL_PATH)
