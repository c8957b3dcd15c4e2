"""What jobs and the server tell their users and operators.

report.py holds the shard reports and the job summary added up from them;
messages.py the numbers and messages worded alike everywhere; progress.py the lines
on stderr and the progress bar below them; metrics.py the Prometheus metrics: serve's
/metrics and transform's --metrics-file.

May import `inputs`, `io` and `errors`; the engines, jobs and serve import it.
"""
