"""What pyproject promises: the runtime installs beside transformers 5 (huggingface_hub 1.x and later,
current tokenizers); only the test extra pins the parity reference, transformers 4.56.2, and its pins.
The fresh-venv smoke step of .ci/run (tests/smoke_transformers5.py) proves the code runs there."""

from __future__ import annotations

import os
import tomllib

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _requirements(section=None) -> dict[str, Requirement]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)["project"]
    items = project["dependencies"] if section is None else project["optional-dependencies"][section]
    return {Requirement(item).name.replace("_", "-").lower(): Requirement(item) for item in items}


@pytest.mark.parametrize("name, versions", [
    ("huggingface-hub", ["0.36.2", "1.0.0", "1.3.1", "2.4.0"]),
    ("tokenizers", ["0.22.2", "0.23.0", "0.23.3"]),
])
def test_runtime_admits_what_transformers_5_brings(name, versions):
    requirement = _requirements()[name]
    for version in versions:
        assert requirement.specifier.contains(version), f"{requirement} refuses {name} {version}"


def test_test_extra_pins_the_parity_reference():
    extra = _requirements("test")
    assert str(extra["transformers"].specifier) == "==4.56.2"
    assert not extra["huggingface-hub"].specifier.contains("1.0.0")
    assert not _requirements().get("transformers"), "transformers is not a runtime dependency"


def test_ci_runs_the_smoke_step_beside_the_newest_transformers():
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as handle:
        script = handle.read()
    assert "tests/smoke_transformers5.py" in script and "venv" in script
    assert os.path.isfile(os.path.join(ROOT, "tests", "smoke_transformers5.py"))
