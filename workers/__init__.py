"""RQ jobs, the worker process and the periodic scheduler."""
