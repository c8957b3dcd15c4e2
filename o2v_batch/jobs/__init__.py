"""Transform jobs: what `o2v-batch transform` and `o2v_batch.transform` run.

transform.py plans this node's shards (listing, --num-shards, --resume, --overwrite)
and hands them to an engine; dry_run.py is --dry-run: the job's checks and plan,
and each shard's first records checked as a worker would; nodes.py assigns shards to
the nodes of an array job.

May import the engines and everything below them; never the command line or serve.
"""
