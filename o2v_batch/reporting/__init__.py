"""What jobs and the server tell their users and operators.

report.py holds the shard reports, the job summary added up from them, the shared
messages and the progress bar; metrics.py holds the Prometheus metrics: serve's
/metrics and transform's --metrics-file.

May import `inputs`, `io` and `errors`; the engines, jobs and serve import it.
"""
