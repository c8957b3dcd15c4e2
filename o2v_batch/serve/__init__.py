"""`o2v-batch serve`: the SageMaker inference container over transform's worker pool.

server.py starts and stops it (`serve`, uvicorn, the listening socket, the workers'
specs); app.py is the ASGI app and its routes; invocations.py turns a request into
records and a worker's fragment into the response; dispatcher.py drives the worker
pool from one thread; worker.py is the server each worker runs (it imports torch, in
the worker process only).

May import the library below the command line (config, artifacts, devices, errors,
execution, formats, jsonstream, responses, batching, metrics, messages, progress),
never `o2v_batch.cli`. Its configuration, ServeConfig, lives in config.py beside
transform's.
"""
