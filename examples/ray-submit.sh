#!/usr/bin/env bash
# o2v-batch on a Ray cluster: the job's driver plans the shards and Ray actors
# serve them across the cluster, one per GPU (or CPU actors), each holding the
# model. Ray restarts a lost actor and retries its shard; outputs are the same
# bytes as `--engine local` writes.
#
#   RAY_ADDRESS=http://ray-head:8265 examples/ray-submit.sh
#
# Every node needs o2v-batch with its ray extra in the cluster's image (from a
# built wheel: pip install "$(ls dist/o2v_batch-*.whl)[ray]") and read access to
# IN and MODEL, write access to OUT. Inside a Ray job
# RAY_ADDRESS points at the cluster, so --engine ray joins it without
# --ray-address. From a machine of the cluster you can also run the driver
# directly: o2v-batch transform ... --engine ray --ray-address auto
set -euo pipefail

RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}  # the cluster's job server (dashboard port)
IN=${IN:-s3://my-bucket/in/}
OUT=${OUT:-s3://my-bucket/out/}
MODEL=${MODEL:-s3://my-bucket/models/o2v/model.tar.gz}

ray job submit --address "$RAY_ADDRESS" -- \
    o2v-batch transform "$IN" "$OUT" --model "$MODEL" \
    --engine ray --resume --no-progress
