"""``python -m benchmarks [--quick] [--out DIR] [--device cpu|cuda]``: the benchmark suite."""
from benchmarks.suite import main

if __name__ == "__main__":
    main()
