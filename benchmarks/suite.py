"""The benchmark suite (see vtp_compile/bench/suite.py): one command per scale.

    python benchmarks/suite.py --tiny          # CI scale, < 60 s
    python benchmarks/suite.py --json cpu.json # CPU scale (or GPU scale when CUDA is present)
"""
import sys

from vtp_compile.bench.suite import main

if __name__ == "__main__":
    sys.exit(main())
