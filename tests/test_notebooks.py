"""Notebooks run end to end as plain Python (on a tiny checkpoint instead of the demo model)."""

import runpy
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.py"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(notebook, tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VIG_MODEL_PATH", tiny_checkpoints["llava"])
    namespace = runpy.run_path(str(notebook), run_name="__main__")
    assert len(namespace["results"]) == len(namespace["samples"])
    page = (tmp_path / ".demo" / "token_heatmap.html").read_text()
    assert page.count("<span title=") == sum(r.n_tokens for r in namespace["results"])
