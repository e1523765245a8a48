"""Batch coding of many notes: input shards, resumable sharded output, local or Ray engines."""

from icdcoder.batch.job import JobSpec, ShardWorker, iter_coded, run_job
from icdcoder.batch.shards import Shard, plan_shards, read_shard

__all__ = ["JobSpec", "Shard", "ShardWorker", "iter_coded", "plan_shards", "read_shard", "run_job"]
