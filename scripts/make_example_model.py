"""Build the example model (examples/model), deterministically, with its requests
(examples/requests) and a sample of its training data (examples/train).

The data is synthetic but has structure a model can learn: 8 topics each own a
disjoint range of token ids, a sequence draws most of its tokens from one topic
and the rest from a shared pool of common tokens, and a pair is labelled 1 when
both sequences come from the same topic. The trained model therefore embeds
sequences of one topic close together.

Usage: python scripts/make_example_model.py [--output DIR] [--examples DIR] [--overwrite]

Without --overwrite it refuses to replace what exists, the shipped examples included.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import tempfile
from pathlib import Path

import torch

from o2v_batch.artifacts import check_output
from o2v_batch.errors import OutputExistsError
from o2v_batch.model.hyperparameters import Hyperparameters
from o2v_batch.training.train import train

ROOT = Path(__file__).resolve().parent.parent
TOPICS = 8
COMMON_IDS = range(1, 200)  # shared by every topic, like "the" and "of"
TOPIC_SIZE = 1250  # topic t owns ids 200 + 1250 t .. 200 + 1250 (t + 1) - 1; the last is 10199
TOPIC_SHARE = 0.85  # of a sequence's tokens come from its topic
ZIPF_EXPONENT = 1.5
# Inside a topic, word frequency follows Zipf's law, as in text: a few words are
# frequent enough to learn from, and a long tail is rare.
TOPIC_RANKS = range(TOPIC_SIZE)
ZIPF_CUMULATIVE = list(
    itertools.accumulate(1 / (rank + 1) ** ZIPF_EXPONENT for rank in TOPIC_RANKS)
)
HYPERPARAMETERS = {
    # 10240 covers the documented requests' ids (up to 10178).
    "enc0_vocab_size": "10240",
    "enc0_max_seq_len": "200",
    "enc0_network": "hcnn",
    "enc0_layers": "2",
    "enc0_token_embedding_dim": "32",
    "enc_dim": "16",
    # One embedding table for both encoders keeps model.safetensors small.
    "tied_token_embedding_weight": "true",
    "mlp_layers": "1",
    "mlp_dim": "32",
    "mlp_activation": "relu",
    "learning_rate": "0.004",
    "mini_batch_size": "64",
    "epochs": "12",
    "early_stopping_patience": "3",
    "bucket_width": "8",
    "seed": "7",
}
DOCUMENTED_REQUESTS = [
    {"in0": [6, 17, 606, 19, 53, 67, 52, 12, 5, 10, 15, 10178, 7, 33, 652, 80, 15, 69, 821, 4]},
    {"in0": [22, 1016, 32, 13, 25, 11, 5, 64, 573, 45, 5, 80, 15, 67, 21, 7, 9, 107, 4]},
    {"in0": [774, 14, 21, 206]},
]


def topic_sequence(rng: random.Random, topic: int) -> list[int]:
    """4-30 tokens, mostly from the topic (Zipf-distributed), the rest common."""
    first = 200 + TOPIC_SIZE * topic

    def token() -> int:
        if rng.random() >= TOPIC_SHARE:
            return rng.choice(COMMON_IDS)
        return first + rng.choices(TOPIC_RANKS, cum_weights=ZIPF_CUMULATIVE)[0]

    return [token() for _ in range(rng.randint(4, 30))]


def make_pairs(rng: random.Random, count: int) -> list[dict]:
    """Half the pairs share a topic (label 1), half do not (label 0)."""
    pairs = []
    for i in range(count):
        topic0 = rng.randrange(TOPICS)
        topic1 = topic0 if i % 2 == 0 else (topic0 + rng.randrange(1, TOPICS)) % TOPICS
        pairs.append(
            {
                "label": int(topic0 == topic1),
                "in0": topic_sequence(rng, topic0),
                "in1": topic_sequence(rng, topic1),
            }
        )
    return pairs


def mixed_requests(rng: random.Random, count: int) -> list[dict]:
    """in0-only, in1-only and pair records, so a transform shows embeddings and scores."""
    records = []
    for i in range(count):
        kind = i % 3
        topic = rng.randrange(TOPICS)
        if kind == 0:
            records.append({"in0": topic_sequence(rng, topic)})
        elif kind == 1:
            records.append({"in1": topic_sequence(rng, topic)})
        else:
            other = topic if rng.random() < 0.5 else rng.randrange(TOPICS)
            records.append({"in0": topic_sequence(rng, topic), "in1": topic_sequence(rng, other)})
    return records


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))


def write_requests(folder: Path, rng: random.Random) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "documented.json").write_text(json.dumps({"instances": DOCUMENTED_REQUESTS}) + "\n")
    write_jsonl(folder / "documented.jsonl", DOCUMENTED_REQUESTS)
    write_jsonl(folder / "pairs.jsonl", mixed_requests(rng, 51))


def existing_outputs(output: str, examples: Path) -> list[str]:
    """What a build would replace: the model, and the example folders where not empty."""
    folders = (examples / "requests", examples / "train")
    existing = [str(f) for f in folders if f.is_dir() and any(f.iterdir())]
    try:
        check_output(output)
    except OutputExistsError:
        existing.insert(0, output)
    return existing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "examples" / "model"))
    parser.add_argument(
        "--examples", default=str(ROOT / "examples"), help="requests/ and train/ go here"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace what exists")
    args = parser.parse_args(argv)
    existing = existing_outputs(args.output, Path(args.examples))
    if existing and not args.overwrite:
        parser.error(
            f"would replace {', '.join(existing)}: pass --overwrite, "
            "or --output and --examples to build elsewhere"
        )
    # One thread: the float sums run in one order, so a rebuild on the same machine repeats
    # the weights exactly (another CPU's vector units may round them differently).
    torch.set_num_threads(1)
    rng = random.Random(20240607)
    training, validation = make_pairs(rng, 6000), make_pairs(rng, 1000)
    examples = Path(args.examples)
    hp = Hyperparameters.from_dict(HYPERPARAMETERS)
    with tempfile.TemporaryDirectory() as tmp:
        train_file, validation_file = Path(tmp, "train.jsonl"), Path(tmp, "validation.jsonl")
        write_jsonl(train_file, training)
        write_jsonl(validation_file, validation)
        result = train(
            hp, str(train_file), args.output, str(validation_file), device="cpu", progress=False
        )
    # A small sample for `o2v-batch train` examples; the model itself saw all 6000 pairs.
    write_jsonl(examples / "train" / "train.jsonl", training[:1000])
    write_jsonl(examples / "train" / "validation.jsonl", validation[:200])
    (examples / "train" / "hyperparameters.json").write_text(
        json.dumps(HYPERPARAMETERS, indent=2) + "\n"
    )
    write_requests(examples / "requests", rng)
    size = sum(f.stat().st_size for f in Path(args.output).iterdir())
    print(
        f"validation accuracy {result.best_metric:.4f} (epoch {result.best_epoch}), "
        f"{size / 1e6:.2f} MB in {args.output}",
        file=sys.stderr,
    )
    return 0 if result.best_metric >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
