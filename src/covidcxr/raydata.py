"""``covidcxr predict --engine ray``: the batch job of :mod:`covidcxr.predict` spread over a Ray cluster.

Only the reading moves. This process (the driver) lists the inputs, resumes, names the outputs
and appends to ``predictions.jsonl`` exactly as the local engine does
(:func:`covidcxr.predict.predict_files`); :class:`RayRows` is the ``read_rows`` it is given. The
inputs still to do become a Ray Dataset of ``(path, stem)`` rows, and a ``map_batches`` stage
with a pool of actors reads them: each actor loads one :class:`~covidcxr.infer.Predictor` once,
then for every batch decodes the files (an unreadable one becomes its error row), runs the
models, writes the per-image PNGs into the output folder and returns the batch's JSON rows,
which the driver appends as they arrive. The rows are made by the same functions as the local
engine's (:func:`covidcxr.predict.read_items`), so they are the same rows, in another order.

Ray is imported here only, and only when the engine runs: ``covidcxr --help`` and the local
engine never import it. It comes with the ``ray`` extra (``pip install 'covidcxr[ray]'``).
Without an address, Ray starts a private cluster on this machine (all its CPUs, no dashboard,
no usage statistics) and stops it at the end; with one, the job joins that cluster, whose
nodes must see the inputs and the output folder under the same paths (a shared file system)
and have covidcxr installed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .batch import ImageFiles, trim_heap

log = logging.getLogger(__name__)

#: What to run when Ray is missing.
RAY_EXTRA = "pip install 'covidcxr[ray]'"
#: Blocks the input list is cut into at most: rows come back block by block, so blocks stay small.
MAX_BLOCKS = 10_000
#: Object store of the private cluster: only paths and JSON rows pass through it (images stay in the actors).
LOCAL_OBJECT_STORE_BYTES = 512 * 2**20


def require_ray() -> None:
    """Check that Ray Data can be imported, without importing it.

    Raises:
        RuntimeError: Ray is not installed; the message says how to install it.
    """
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("pyarrow") is None:
        raise RuntimeError(f"--engine ray needs Ray Data, which is not installed: {RAY_EXTRA}")


@dataclass
class WorkerStats:
    """What one actor did: images read and seconds spent reading them (model loading excluded)."""

    images: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Images per second while busy."""
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RayRows:
    """``read_rows`` for :func:`covidcxr.predict.predict_files`: the inputs read by a pool of Ray actors.

    Args:
        load: keyword arguments of :meth:`Predictor.load <covidcxr.infer.Predictor.load>`, as the
            driver's own Predictor was loaded (each actor loads its own from them).
        address: a running cluster to join (``ray start --head`` prints it; ``auto``: the one on
            this machine); None starts a private cluster on this machine for the run.
        num_workers: actors (None: one per CPU of the cluster, or one per ``gpus_per_worker``
            GPUs of it).
        gpus_per_worker: GPUs each actor asks for; its models then run on one (torch backend).
        batch_size: images per call of an actor.

    Attributes:
        workers: :class:`WorkerStats` by actor id, filled in as rows arrive.
        startup_seconds: time to start or join the cluster (0 before a run).
    """

    load: dict
    address: str | None = None
    num_workers: int | None = None
    gpus_per_worker: float = 0.0
    batch_size: int = 8
    workers: dict[str, WorkerStats] = field(default_factory=dict)
    startup_seconds: float = 0.0

    def __call__(self, files: list[str], stems: list[str], out: Path, report: bool) -> Iterator[tuple[int, list[dict]]]:
        """Yield ``(inputs finished, their rows)`` as the actors finish them, in no set order.

        Nothing is started when ``files`` is empty (a resumed run with nothing left to do).
        """
        if not files:
            return
        start = time.perf_counter()
        started = connect(self.address)
        self.startup_seconds = time.perf_counter() - start
        try:
            for batch in self.dataset(files, stems, out, report).iter_batches(batch_size=None, batch_format="numpy"):
                rows = [json.loads(r) for r in batch["row"]]
                for worker, seconds in zip(batch["worker"], batch["seconds"], strict=True):
                    stats = self.workers.setdefault(str(worker), WorkerStats())
                    stats.images += 1
                    stats.seconds += float(seconds)
                yield len(rows), rows
        finally:
            if started:
                import ray

                ray.shutdown()

    def dataset(self, files: Sequence[str], stems: Sequence[str], out: Path, report: bool):
        """The inputs as a Ray Dataset, mapped by the actor pool to ``row`` (JSON), ``worker`` and ``seconds`` columns."""
        import ray
        import ray.data

        items = [{"path": f, "stem": s} for f, s in zip(files, stems, strict=True)]
        n_workers = min(self.num_workers or default_workers(self.gpus_per_worker), len(items))
        # At least one block per actor, so that a short list still keeps every actor busy.
        blocks = min(max(n_workers, math.ceil(len(items) / self.batch_size)), MAX_BLOCKS)
        log.info("ray: %d inputs in %d blocks, %d workers", len(items), blocks, n_workers)
        return ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            ReadActor,
            fn_constructor_kwargs={
                "load": self.load,
                "out": str(out),
                "report": report,
                "cwd": os.getcwd(),
                "gpu": self.gpus_per_worker > 0,
            },
            batch_size=self.batch_size,
            batch_format="numpy",
            # Two blocks queued per actor: one running, one waiting, and none held back from an idle actor.
            compute=ray.data.ActorPoolStrategy(size=n_workers, max_tasks_in_flight_per_actor=2),
            num_cpus=1,
            num_gpus=self.gpus_per_worker or None,
        )


class ReadActor:
    """One Ray actor of the pool: a Predictor loaded once, then called on batch after batch.

    Args:
        load: keyword arguments of ``Predictor.load``.
        out: the output folder (PNGs are written there; the driver writes the rows).
        report: write the report PNGs.
        cwd: the driver's working folder: relative inputs, weights and ``--out`` are read from there,
            and the rows name them as the driver's user typed them.
        gpu: run the models on the GPU Ray gave this actor.
    """

    def __init__(self, load: dict, out: str, report: bool, cwd: str, gpu: bool) -> None:
        import ray

        from .infer import Predictor

        if os.path.isdir(cwd):
            os.chdir(cwd)
        self.predictor = Predictor.load(**load)
        if gpu:
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError(
                    "--gpus-per-worker: Ray gave this worker a GPU but PyTorch sees none; install a CUDA build "
                    "of PyTorch on every GPU node, or leave --gpus-per-worker out"
                )
            self.predictor.to("cuda")
        self.out, self.report = Path(out), report
        self.id = ray.get_runtime_context().get_actor_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .predict import read_items

        start = time.perf_counter()
        files, stems = [str(p) for p in batch["path"]], [str(s) for s in batch["stem"]]
        images = ImageFiles(files)
        rows = list(
            read_items(self.predictor, [images[i] for i in range(len(files))], files, stems, self.out, self.report)
        )
        trim_heap()
        seconds = (time.perf_counter() - start) / max(1, len(rows))
        return {
            "row": np.array([json.dumps(r) for r in rows], dtype=object),
            "worker": np.array([self.id] * len(rows), dtype=object),
            "seconds": np.full(len(rows), seconds),
        }


def connect(address: str | None) -> bool:
    """Join the cluster at ``address``, or start a private one sized to this machine; True if started here.

    A Ray session already open in this process (``ray.init()`` by a Python caller) is used as it is.

    Raises:
        RuntimeError: Ray is not installed.
        ValueError: No cluster answers at ``address``.
    """
    require_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before the import: no usage report leaves the machine
    import ray
    import ray.data

    quiet = log.getEffectiveLevel() > logging.INFO
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # covidcxr draws its own
    context.print_on_execution_start = not quiet
    context.enable_auto_log_stats = False
    context.execution_options.verbose_progress = not quiet
    if quiet:
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
    if ray.is_initialized():
        return False
    level = logging.INFO if not quiet else logging.ERROR
    if address:
        try:
            ray.init(address=address, logging_level=level)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ValueError(
                f"--address {address}: no Ray cluster answers there ({err}); start one with `ray start --head` "
                "on the head node and pass the address it prints, or leave --address out to use this machine alone"
            ) from None
        return True
    # The actors import the same covidcxr as this process, also from a source checkout on sys.path.
    package_root = str(Path(__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        logging_level=level,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
    )
    return True


def default_workers(gpus_per_worker: float) -> int:
    """Actors for the connected cluster: one per CPU, or one per ``gpus_per_worker`` GPUs.

    Raises:
        ValueError: The cluster has fewer GPUs than one worker asks for.
    """
    import ray

    resources = ray.cluster_resources()
    if gpus_per_worker > 0:
        n = int(resources.get("GPU", 0) // gpus_per_worker)
        if n < 1:
            raise ValueError(
                f"--gpus-per-worker {gpus_per_worker}: the Ray cluster has {resources.get('GPU', 0):g} GPUs; "
                "join one with GPUs (--address) or leave --gpus-per-worker out"
            )
        return n
    return max(1, int(resources.get("CPU", 1)))


def write_parquet(jsonl: str | Path, parquet: str | Path | None = None) -> Path:
    """A Parquet copy of ``predictions.jsonl`` (every row, resumed runs' too), written atomically.

    Columns are the row's keys (nested ones as structs: ``probabilities``, ``findings``,
    ``severity``, ``model``); an error row has nulls where a reading has values.

    Args:
        jsonl: the rows.
        parquet: where to write (default: ``predictions.parquet`` beside ``jsonl``).

    Returns:
        The Parquet file.

    Raises:
        RuntimeError: pyarrow is not installed.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise RuntimeError(f"--parquet needs pyarrow: {RAY_EXTRA}") from err
    jsonl = Path(jsonl)
    parquet = Path(parquet) if parquet else jsonl.with_suffix(".parquet")
    with open(jsonl) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    keys = list(dict.fromkeys(k for row in rows for k in row))  # every row's keys: error rows have few
    columns = {k: pa.array([row.get(k) for row in rows]) for k in keys}
    # A column null in every row (no heat maps, no warnings) is typed as text, as when it has values.
    for k, col in columns.items():
        if pa.types.is_null(col.type):
            columns[k] = col.cast(pa.string())
        elif pa.types.is_list(col.type) and pa.types.is_null(col.type.value_type):
            columns[k] = col.cast(pa.list_(pa.string()))
    table = pa.table(columns)
    tmp = parquet.with_name(parquet.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, parquet)
    return parquet
