"""The execution layer: worker processes and what runs in them.

The parent's side imports no torch:
- `pool`: the worker pool (bounded mini-batches in flight, dead and hung workers
  replaced, retries);
- `crew`: the pool's workers as a whole (started, spares first; a lost one
  replaced; waited on; stopped);
- `handle`: one worker as the parent holds it (its process, pipe, mini-batches in
  flight and segments);
- `recovery`: the pool's retries and the `Recovery` events it tells;
- `planning`: how many workers, in which roles (whole workers; on a GPU, host workers
  and a device process per GPU), on which devices, with how many threads (sized
  from cores and GPUs);
- `exits`: how a worker ended (its exit, the kernel's OOM killer, an interpreter
  that could not start);
- `segments`: the shared memory that requests and responses travel through;
- `protocol`: the messages across the boundary, as plain dataclasses.

A worker process's side:
- `worker`: its start-up and its end (`Spares`, exit reasons);
- `worker_loop`: its loop of mini-batches, one after another;
- `inference`: one mini-batch in, encoded responses out (records, tokens, the
  forward pass handed to the server's forward, responses); numpy only;
- `forward_work`: what a forward pass takes (checked token ids, pairs) and gives
  (scores, embeddings), as plain arrays;
- `forward`: the forward pass in this process (encoders, head); imports torch;
- `device_link`: a GPU's host workers and its device process: the link and memory
  files between them, each side's server; numpy only;
- `factories`: the servers of workers that load the model (whole workers, device
  processes); imports torch;
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
