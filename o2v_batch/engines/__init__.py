"""Transform engines: `local` (worker processes on this machine) and `ray` (actors on
a Ray cluster). Each exposes `check(config)`, `prestart(config)` (workers started
while the job checks its model and lists its inputs) and `run(config, tasks,
model_dir, log, faults, spares)`, which counts restarts and retries in `faults`
(`local` reads shards on a thread of `engines.reader`); both serve shards
through `engines.shard` and write them through `engines.writer` (a writer thread)
into `engines.shard_output` (a shard's parts reordered and framed into its atomic
output), and neither imports the other.

May import config, reporting, the execution layer and what is below it; never the
jobs, serve or the command line."""
