#!/usr/bin/env bash
# Nightly batch transform of yesterday's shards, for cron.
#
#   crontab -e
#   30 2 * * * /opt/o2v/nightly.sh >>/var/log/o2v-nightly.log 2>&1
#
# Reads IN_ROOT/<yyyy>/<mm>/<dd>/ of yesterday and writes OUT_ROOT/<yyyy>/<mm>/<dd>/.
# With --resume a rerun after a crash finishes the work instead of redoing it:
# outputs are atomic per shard, so every one that exists is complete and is
# skipped, and the rest are done. DAY=2024/05/01 redoes a past day; arguments
# go to o2v-batch (e.g. --engine ray). The exit status is o2v-batch's: 0 done,
# 1 some shard failed (rerun to retry just those), 2 usage error; 75 means the
# previous run still holds the lock.
set -euo pipefail

IN_ROOT=${IN_ROOT:-s3://my-bucket/events}
OUT_ROOT=${OUT_ROOT:-s3://my-bucket/embeddings}
MODEL=${MODEL:-s3://my-bucket/models/o2v/model.tar.gz}
LOCK=${LOCK:-/tmp/o2v-nightly.lock}
DAY=${DAY:-$(date -d yesterday +%Y/%m/%d)}  # GNU date

# Two runs never overlap: a slow night's run keeps the lock until it ends.
exec 9>"$LOCK"
if ! flock --nonblock 9; then
    echo "o2v-nightly: another run holds $LOCK; not starting" >&2
    exit 75  # EX_TEMPFAIL
fi

echo "o2v-nightly: $(date -Is) $IN_ROOT/$DAY/ -> $OUT_ROOT/$DAY/" >&2
status=0
o2v-batch transform "$IN_ROOT/$DAY/" "$OUT_ROOT/$DAY/" --model "$MODEL" \
    --resume --no-progress "$@" || status=$?
echo "o2v-nightly: $(date -Is) exit status $status" >&2
exit "$status"
