"""``--ray [ADDRESS]``: the same training loop in Ray Train workers, for clusters.

The driver (the ``train`` command) reads and checks the samples, puts them in Ray's object store
and starts a ``TorchTrainer``: Ray Train starts the workers, sets up the process group (NCCL on
GPUs, gloo on CPUs), and each worker runs ``Trainer`` with Accelerate on top of it, exactly as
under ``accelerate launch``. The main worker sends each step's metrics through a Ray queue to
the driver, which writes them on stdout as they come.

Without an address (``--ray``) a local Ray instance is started with its dashboard off; an
address (``--ray auto``, ``--ray ray://head:10001``) joins a running cluster. On a cluster,
``--out`` and the checkpoint directory must be on storage every node shares: the main worker,
wherever Ray places it, writes there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tracewheel.errors import TracewheelError

from .config import TrainConfig
from .data import TrainSample


def worker_loop(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs."""
    import ray

    from .trainer import Trainer

    # stdout carries the driver's records only: whatever a library prints here goes to stderr.
    os.dup2(2, 1)
    queue = config["queue"]
    samples = ray.get(config["samples"])
    trainer = Trainer(TrainConfig.from_dict(config["config"]), samples,
                      fingerprint=config["fingerprint"], emit=queue.put,
                      log=lambda line: queue.put({"_log": line}))
    trainer.setup().train()


def _failure(err: Exception) -> str:
    """The first worker's own error message, not Ray's wrapping of it."""
    failures = getattr(err, "worker_failures", None) or {}
    for _, failure in sorted(failures.items()):
        cause = getattr(failure, "cause", None) or failure
        message = getattr(cause, "message", None) or str(cause)
        lines = [line for line in str(message).splitlines() if line.strip()]
        return lines[-1] if lines else type(cause).__name__
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _start_ray(address: str, workers: int, verbose: int) -> bool:
    """Ray started here, unless it runs already (then False: it is not ours to stop)."""
    import ray

    if ray.is_initialized():
        return False
    if address == "local":
        # The dashboard stays off; worker logs reach our stderr only with -v (they are in Ray's
        # session logs either way).
        ray.init(include_dashboard=False, num_cpus=max(os.cpu_count() or 1, workers),
                 log_to_driver=bool(verbose), configure_logging=bool(verbose))
    else:
        ray.init(address=address, log_to_driver=bool(verbose))
    return True


def run(cfg: TrainConfig, samples: list[TrainSample], fingerprint: str, *, address: str,
        workers: int, gpu: bool | None, emit: Callable[[dict], None],
        log: Callable[[str], None], verbose: int = 0) -> None:
    """Train through Ray Train with ``workers`` workers; ``address`` "local" starts Ray here."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    storage = None
    started_here = _start_ray(address, workers, verbose)
    try:
        use_gpu = gpu if gpu is not None else ray.cluster_resources().get("GPU", 0) >= workers
        queue = Queue(actor_options={"num_cpus": 0})
        # Ray Train's own run files: a temporary directory on this machine; on a cluster they
        # must be on shared storage, beside the step checkpoints.
        storage = Path(tempfile.mkdtemp(prefix="train-ray-")) if address == "local" else \
            Path(cfg.steps_dir).resolve() / "ray"
        trainer = TorchTrainer(
            worker_loop,
            train_loop_config={"config": cfg.to_dict(), "samples": ray.put(samples),
                               "fingerprint": fingerprint, "queue": queue},
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=use_gpu,
                resources_per_worker={"CPU": 1, "GPU": 1} if use_gpu else {"CPU": 1}),
            run_config=RunConfig(storage_path=str(storage), name="train"),
        )
        log(f"Ray Train: {workers} workers on {'GPUs' if use_gpu else 'CPUs'}")
        done = threading.Event()

        def forward() -> None:
            # Metrics are written as they come, not when training ends.
            while not done.is_set() or not queue.empty():
                try:
                    item = queue.get(timeout=0.2)
                except Empty:
                    continue
                if "_log" in item:
                    log(item["_log"])
                else:
                    emit(item)

        thread = threading.Thread(target=forward, daemon=True)
        thread.start()
        try:
            trainer.fit()
        except Exception as err:  # Ray wraps the workers' errors
            raise TracewheelError(f"Ray Train failed: {_failure(err)}") from err
        finally:
            done.set()
            thread.join()
    finally:
        if started_here:
            ray.shutdown()
        if address == "local" and storage is not None:
            shutil.rmtree(storage, ignore_errors=True)
