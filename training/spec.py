"""What a model module hands the pipeline after training: graphs to export and everything the card says."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from training.common import FitResult
from training.export import GraphSpec


@dataclass(frozen=True)
class DataOptions:
    """Where data comes from; shared by every model."""

    mnist_dir: Path | None = None
    seed: int = 0


@dataclass(frozen=True)
class Gate:
    """A quality target the model must reach on the held-out test set."""

    name: str
    value: float
    target: float
    higher_is_better: bool = False

    @property
    def passed(self) -> bool:
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def to_card(self) -> dict:
        return {
            "name": self.name,
            "value": self.value,
            "target": self.target,
            "rule": ">=" if self.higher_is_better else "<=",
            "passed": self.passed,
        }


@dataclass
class Trained:
    """A trained model, ready for export and its card."""

    kind: str
    description: str
    tasks: list[str]
    graphs: list[GraphSpec]
    metrics: dict
    gates: list[Gate]
    data: dict
    fit: FitResult
    # What a client must do to raw data before the graph, and what the graph does itself.
    preprocessing: dict
    # Extra card sections: "input" (how clients feed it), "anomaly", "image", "sequence", "forecast".
    sections: dict = field(default_factory=dict)
    # Extra files written beside the model (e.g. a PNG of samples): name -> bytes.
    artifacts: dict[str, bytes] = field(default_factory=dict)
