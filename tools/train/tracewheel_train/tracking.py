"""Experiment trackers for `train --report-to`: Accelerate's TensorBoard, Weights & Biases and
MLflow trackers, fed the same metrics as the JSONL on stdout, on the main process only.

They work without a network: wandb runs offline unless ``WANDB_MODE`` says otherwise, MLflow
writes a local file store unless ``MLFLOW_TRACKING_URI`` names a server, TensorBoard writes
event files. Everything goes under the report directory.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from tracewheel.errors import TracewheelError

REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")
# The package each tracker needs (either one, for TensorBoard), and what to install.
_NEEDS = {"tensorboard": (("tensorboard", "tensorboardX"), "tensorboardX"),
          "wandb": (("wandb",), "wandb"), "mlflow": (("mlflow",), "mlflow")}


def _tracker(kind: str, run_name: str, directory: Path) -> Any:
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    if kind == "tensorboard":
        return TensorBoardTracker(run_name, directory)
    if kind == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
        return WandBTracker(run_name, dir=str(directory))
    os.environ.setdefault("MLFLOW_TRACKING_URI", (directory / "mlruns").resolve().as_uri())
    return MLflowTracker(experiment_name=run_name, logging_dir=str(directory))


def check_report_to(kinds: tuple[str, ...]) -> None:
    """Fail in one line, before training, where a tracker's package is missing."""
    for kind in kinds:
        if kind == "none":
            continue
        modules, package = _NEEDS[kind]
        if not any(importlib.util.find_spec(m) for m in modules):
            raise TracewheelError(f"--report-to {kind} needs the {package} package: "
                                f"pip install {package}")


class Trackers:
    """The trackers asked for; ``log(metrics)`` per optimizer step, ``finish()`` at the end."""

    def __init__(self, kinds: tuple[str, ...], directory: str | os.PathLike, run_name: str,
                 config: dict):
        check_report_to(kinds)
        self.directory = Path(directory)
        self.trackers = []
        for kind in dict.fromkeys(k for k in kinds if k != "none"):
            self.directory.mkdir(parents=True, exist_ok=True)
            tracker = _tracker(kind, run_name, self.directory)
            if hasattr(tracker, "start"):  # accelerate >= 1.4 starts trackers explicitly
                tracker.start()
            tracker.store_init_configuration(
                {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                 for k, v in config.items()})
            self.trackers.append(tracker)

    def log(self, metrics: dict) -> None:
        values = {k: v for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        for tracker in self.trackers:
            tracker.log(values, step=metrics.get("step"))

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
