"""Benchmark suite: streamworker against its peers on one private redis-server (``make bench``).

Not a test: numbers depend on the machine. See README "Performance".
"""
