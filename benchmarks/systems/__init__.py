"""The systems the benchmark compares, one module each: o2v-batch itself (`o2v_batch`,
`startup`, `scaling`, `serve`) and what it is held against (`baseline`, `ray_data`,
`ceiling`, `io_floor`, which run in a child process and time themselves)."""
