"""`python -m o2v_batch` is the `o2v-batch` command."""

from o2v_batch.cli import main

main(prog_name="o2v-batch")
