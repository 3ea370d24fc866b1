"""Every experiment runs end to end with its TINY settings (Pyro's test_examples)."""
import json

import pytest

import experiments


@pytest.mark.parametrize("name", experiments.available())
def test_experiment_runs_tiny(name, tmp_path):
    module = experiments.get(name)
    results = module.run({**module.CONFIG, **module.TINY}, tmp_path)
    assert isinstance(results, dict) and results
    json.dumps(results, default=str)  # results are serialisable
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written, f"{name} wrote nothing to its folder"
    assert any(p.suffix == ".md" for p in written), f"{name} wrote no Markdown table (the CLI prints them)"
