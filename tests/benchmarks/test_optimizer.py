"""benchmarks.optimizer runs and times what it says (no wall-time assertion)."""
import pytest

from benchmarks import optimizer


def test_the_optimizer_benchmark_times_both_adams_on_the_same_model():
    row = optimizer.case("tiny made", "made", dict(hidden_sizes=(8,)), rounds=1, steps=2)
    assert row["parameters"] == 785 * 8 + 9 * 784
    assert row["step, default (ms)"] > 0 and row["step, fused (ms)"] > 0
    assert row["fused speed-up"] == pytest.approx(row["step, default (ms)"] / row["step, fused (ms)"])
