"""Servers for developing and testing o2v-batch on one machine: a real S3 server on
loopback (`local_s3`, SeaweedFS), and the shell commands that start and stop it
(`local_s3_commands`, behind `scripts/local_s3.py`). Part of the checkout only, not of
the o2v-batch wheel."""
