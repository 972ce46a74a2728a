"""The benchmark suite (BENCHMARKS.md): the project measured side by side with its peers.

Each benchmark runs the project and a comparator (a peer program or a physical ceiling) on the
same data, alternating, several repetitions, and reports medians, spreads and their ratio: the
machines are shared and noisy, so a ratio measured side by side is what means something.
`python -m bench [--quick] [--only B1,B3]`; results go to bench/results/ and BENCHMARKS.md.
"""
