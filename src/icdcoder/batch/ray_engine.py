"""The Ray engine of a batch job: shards streamed through ``ray.data`` to stateful coder actors.

Each actor is a :class:`~icdcoder.batch.job.ShardWorker`: it loads the model once and codes one shard
per call (``map_batches`` with ``batch_size=1``, one item per shard), writing the shard's files itself,
so the driver only sees small summaries and the output never funnels through it. ``concurrency`` sets
the number of actors, ``num_cpus`` / ``num_gpus`` what each holds: a generative coder on the vLLM
back-end runs one model replica per GPU actor (``num_gpus: 1``). Without ``address`` a local Ray
instance sized to this machine is started (and stopped at the end); with one, the job joins that
cluster, whose workers must see the model folder, the input and ``out`` at the same paths (a shared
file system).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from icdcoder.batch.job import JobSpec, ShardWorker
from icdcoder.batch.shards import Shard
from icdcoder.errors import IcdcoderError


class RayShardCoder:
    """The actor class: one ShardWorker per actor, called with a batch of shard descriptions."""

    def __init__(self, spec: dict[str, Any], out: str):
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit():  # Ray sets it to the actor's num_cpus: torch should follow
            try:
                import torch

                torch.set_num_threads(int(threads))
            except ImportError:
                pass
        self.worker, self.out = ShardWorker(spec), out

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        keys = list(batch)
        summaries = []
        for values in zip(*(batch[k] for k in keys)):
            shard = Shard(**{k: _plain(v) for k, v in zip(keys, values)})
            summaries.append(self.worker.run(shard, self.out))
        return {k: [s[k] for s in summaries] for k in summaries[0]} if summaries else {}


def _plain(value: Any) -> Any:
    """numpy scalars (what ray.data hands over) back to Python values."""
    return value.item() if hasattr(value, "item") else value


def run_on_ray(spec: JobSpec, shards: list[Shard], out: Path, *, workers: int, address: str | None = None,
               num_cpus: float = 1.0, num_gpus: float = 0.0) -> Iterator[dict[str, Any]]:
    """Yield each shard's summary as its actor finishes it."""
    try:
        import ray
    except ImportError:
        raise IcdcoderError("--engine ray needs Ray: pip install -c constraints.txt -e '.[ray]'") from None
    if not shards:
        return
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, **kwargs)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ds = ray.data.from_items([s.to_dict() for s in shards], override_num_blocks=len(shards))
        resources: dict[str, float] = {"num_cpus": num_cpus}
        if num_gpus:
            resources["num_gpus"] = num_gpus
        results = ds.map_batches(RayShardCoder, fn_constructor_kwargs={"spec": spec.to_dict(), "out": str(out)},
                                 batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), **resources)
        for row in results.iter_rows():
            yield {k: _plain(v) for k, v in row.items()}
    finally:
        if started_here:
            ray.shutdown()
