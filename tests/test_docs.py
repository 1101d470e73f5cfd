"""The documentation site builds without a warning (mkdocs --strict): every page, snippet and docstring."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_without_warnings(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    page = (tmp_path / "site" / "guide" / "metadata" / "index.html").read_text()
    assert "SDV" in page and "primary_key" in page
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "sample_remaining_columns" in api and "metadata" in api  # docstrings rendered
    bench = (tmp_path / "site" / "benchmarks" / "index.html").read_text()
    assert "tabsyn" in bench and "8&lt;" not in bench  # result tables included, no snippet marker left
