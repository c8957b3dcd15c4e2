"""The benchmark behind `python scripts/bench.py` (its protocol and latest figures: the
README's Performance section) and the record generators that the benchmark, the memory
check and the tests share. Part of the checkout only, not of the o2v-batch wheel."""
