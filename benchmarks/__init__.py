"""Benchmarks of eae-kernels against the naive cdist baseline and the libraries users would pick
instead (torch.compile, pykeops, faiss).

    python -m benchmarks.run            # full sweep on this machine's device (CPU: 8.7 min on a quiet 2-core machine)
    python -m benchmarks.run --quick    # about a minute: N in {100, 1024, 4096}, d=64, k=1
    pytest benchmarks --benchmark-only  # pytest-benchmark microbenchmarks of the key cases

Results go to ``benchmarks/results/<device>.{json,md}`` with two plots (time and memory vs N).

Modules: ``methods`` (what is compared), ``timing`` and ``memory`` (how it is measured),
``checks`` (each timed result against the reference), ``machine`` (the machine and its measured
FMA peak), ``report`` and ``plot`` (the outputs), ``run`` (the sweep and its command line).
"""
