"""Benchmarks (``landscape bench KIND``): each compares this toolkit against peers in one run.

A benchmark module defines ``add_arguments(parser)`` and ``run(args) -> int`` and prints
ratios against its peers. Benchmarks never assert on time; tests never time anything.
"""
KINDS = ("surface", "hessian", "data", "sharpness")
