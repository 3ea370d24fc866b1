"""Speed benchmarks (not tests): ratios against hand-written PyTorch measured in one run."""
