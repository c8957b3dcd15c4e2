#!/usr/bin/env bash
# o2v-batch as an AWS Batch array job: N children share the shards under IN,
# balanced by bytes, and together write exactly the outputs of one run.
#
# AWS Batch gives every child AWS_BATCH_JOB_ARRAY_INDEX (0..N-1); o2v-batch
# reads it as --shard-index, so every child runs the same command. Each child
# writes its own summary, OUT/_SUCCESS.<index>-of-N, when all of its shards
# succeeded; --resume lets a retried child skip what it already wrote.
#
#   JOB_QUEUE=gpu-queue JOB_DEFINITION=o2v-batch N=8 examples/aws-batch-array-job.sh
#
# JOB_DEFINITION is a container job definition whose image has o2v-batch
# installed and whose job role may read IN and MODEL and write OUT.
set -euo pipefail

N=${N:-4}  # AWS Batch array jobs have 2 to 10,000 children
IN=${IN:-s3://my-bucket/in/}
OUT=${OUT:-s3://my-bucket/out/}
MODEL=${MODEL:-s3://my-bucket/models/o2v/model.tar.gz}
JOB_QUEUE=${JOB_QUEUE:?set JOB_QUEUE to your AWS Batch job queue}
JOB_DEFINITION=${JOB_DEFINITION:?set JOB_DEFINITION to your o2v-batch job definition}

overrides=$(printf '{"command": ["o2v-batch", "transform", "%s", "%s", "--model", "%s", "--num-shards", "%d", "--resume", "--no-progress"]}' \
    "$IN" "$OUT" "$MODEL" "$N")

aws batch submit-job \
    --job-name "o2v-embed-$(date +%Y%m%d-%H%M%S)" \
    --job-queue "$JOB_QUEUE" \
    --job-definition "$JOB_DEFINITION" \
    --array-properties "size=$N" \
    --retry-strategy "attempts=3" \
    --container-overrides "$overrides"
