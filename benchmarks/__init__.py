"""The benchmark behind `python scripts/bench.py` (its protocol and latest figures: the
README's Performance section). Part of the checkout only, not of the o2v-batch wheel."""
