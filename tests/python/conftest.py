"""Shared pytest set-up for plugind's Python tests."""

import sys
from pathlib import Path

# Test helpers live beside the tests; make them importable without packaging.
sys.path.insert(0, str(Path(__file__).resolve().parent))
