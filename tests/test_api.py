"""The public surface: each stage's __init__ exports exactly what exists, and the CLI stays light."""

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["tuneforge.data", "tuneforge.models", "tuneforge.train"])
def test_all_exports_exist(module: str) -> None:
    mod = importlib.import_module(module)
    assert mod.__all__, f"{module} must declare __all__"
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ names missing {name}"


def test_cli_import_does_not_import_torch() -> None:
    code = "import sys, tuneforge.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
