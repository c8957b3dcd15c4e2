"""The execution layer: worker processes and what runs in them.

The parent's side imports no torch:
- `pool`: the worker pool (bounded mini-batches in flight, dead and hung workers
  replaced, retries);
- `crew`: the pool's workers as a whole (started, spares first; a lost one
  replaced; waited on; stopped);
- `handle`: one worker as the parent holds it (its process, pipe, mini-batches in
  flight and segments);
- `recovery`: the pool's retries and the `Recovery` events it tells;
- `planning`: how many workers, on which devices, with how many threads (sized
  from cores and GPUs);
- `segments`: the shared memory that requests and responses travel through;
- `protocol`: the messages across the boundary, as plain dataclasses.

A worker process's side:
- `worker`: its start-up and its end (`Spares`, exit reasons);
- `worker_loop`: its loop of mini-batches, whole or in three stages on a GPU;
- `inference`: one mini-batch in, encoded responses out (records, tokens, the
  forward pass, responses); imports torch;
- `predictions`: a mini-batch's predictions encoded as its responses (joined,
  filtered, error objects in bad records' places);
- `device_loop`: the forward passes on one device, from reused staging buffers;
  imports torch;
- `buckets`: the ladder of padded lengths on a GPU and the device batches cut
  along it (numpy only);
- `records`: a mini-batch's records parsed and checked (numpy only, so that
  --dry-run checks records in the parent with the same code);
- `allocator`: glibc's malloc told to keep what mini-batches free (the command's
  process asks for it too);
- `main_module`: refuses a job started where spawned workers cannot re-import the
  caller (no `__main__` guard, stdin).

It may import the packages below it (inputs, outputs, artifacts, model, io, errors),
never config, the engines, the jobs, serve or the command line.
"""
