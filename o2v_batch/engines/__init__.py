"""Transform engines: `local` (worker processes on this machine) and `ray` (actors on
a Ray cluster). Each exposes `check(config)` and `run(config, shards, log) -> worker
restarts`; both serve shards through `engines.shard`, and neither imports the other."""
