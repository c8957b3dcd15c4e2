"""Servers for developing and testing o2v-batch on one machine: a real S3 server on
loopback (`local_s3`, SeaweedFS). Part of the checkout only, not of the o2v-batch wheel."""
