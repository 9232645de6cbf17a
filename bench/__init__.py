"""Latency and throughput benchmarks: the gateway side by side with the upstream alone.

``python -m bench`` runs the suite (see bench/README.md); the older single-purpose
scripts (pow_bench.py, parser_bench.py, server_bench.py) still run on their own.
"""
