"""Building blocks of the benchmark harness (``benchmarks/sysbench_compare.py``)."""
