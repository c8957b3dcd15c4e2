"""Array-job sharding: N nodes together write exactly one run's outputs."""

from __future__ import annotations

import filecmp
import os

import pytest
from helpers import make_model, random_records, write_jsonl

from o2v_batch.config import TransformConfig
from o2v_batch.errors import ConfigError
from o2v_batch.io import Shard
from o2v_batch.jobs.nodes import assign, shard_index_from, summary_name
from o2v_batch.jobs.transform import transform


def _shards(sizes: list[int]) -> list[Shard]:
    return [Shard(f"/in/s{i:02d}.jsonl", f"s{i:02d}.jsonl", size) for i, size in enumerate(sizes)]


SKEWED = [1000, 10, 10, 10, 700, 300, 10, 290, 5, 5, 400, 1]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_every_shard_assigned_once_in_listing_order(n):
    shards = _shards(SKEWED)
    parts = assign(shards, n)
    assert len(parts) == n
    assert sorted(s.rel for part in parts for s in part) == sorted(s.rel for s in shards)
    for part in parts:
        assert [s.rel for s in part] == sorted(s.rel for s in part)
    assert assign(list(shards), n) == parts, "deterministic"


def test_balanced_by_bytes_not_by_count():
    parts = assign(_shards(SKEWED), 3)
    loads = [sum(s.size for s in part) for part in parts]
    # 2741 bytes over 3 nodes: the biggest shard (1000) bounds the best split, and it is reached.
    assert sorted(loads) == [751, 990, 1000]
    by_count = [sum(SKEWED[k : k + 4]) for k in range(0, 12, 4)]
    assert max(by_count) == 1300, "four shards a node would leave one node 30% over"


@pytest.mark.parametrize(
    ("environ", "index"),
    [({}, None), ({"JOB_COMPLETION_INDEX": "2"}, 2), ({"AWS_BATCH_JOB_ARRAY_INDEX": "1"}, 1)],
)
def test_shard_index_from_the_scheduler(environ, index):
    assert shard_index_from(environ) == index


def test_a_bad_scheduler_index_is_refused():
    with pytest.raises(ConfigError, match=r"JOB_COMPLETION_INDEX='x' is not a shard index"):
        shard_index_from({"JOB_COMPLETION_INDEX": "x"})


def test_summary_names_never_collide():
    assert summary_name(1, 0) == "_SUCCESS"
    assert {summary_name(3, k) for k in range(3)} == {
        "_SUCCESS.0-of-3",
        "_SUCCESS.1-of-3",
        "_SUCCESS.2-of-3",
    }


@pytest.mark.slow
def test_sharded_runs_together_equal_one_run(tmp_path):
    model = make_model(tmp_path / "model")
    for i, n in enumerate([40, 3, 3, 25, 2, 12, 1]):
        write_jsonl(tmp_path / "in" / f"part-{i}.jsonl", random_records(n, seed=i))

    def run(out, **options):
        """The outputs this run wrote."""
        before = set(os.listdir(out)) if out.exists() else set()
        summary = transform(
            TransformConfig(
                input=str(tmp_path / "in"), output=str(out), model=str(model), **options
            ),
            log=lambda line: None,
        )
        assert summary.shards_failed == 0
        return sorted(p for p in set(os.listdir(out)) - before if not p.startswith("_"))

    whole = run(tmp_path / "whole")
    for n in (2, 3):
        out = tmp_path / f"sharded-{n}"
        written = [run(out, num_shards=n, shard_index=k) for k in range(n)]
        flat = [name for names in written for name in names]
        assert len(flat) == len(set(flat)), "no shard written twice"
        assert sorted(os.listdir(out)) == sorted(whole + [summary_name(n, k) for k in range(n)])
        _, mismatch, errors = filecmp.cmpfiles(tmp_path / "whole", out, whole, shallow=False)
        assert (mismatch, errors) == ([], [])
