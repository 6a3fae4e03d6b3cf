"""The lazy model registries: every name leads to the class of that name, imported only when looked up."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aesq.models import EMBEDDERS, SCORERS, Embedder, Scorer


@pytest.mark.parametrize(("registry", "kind"), [(SCORERS, Scorer), (EMBEDDERS, Embedder)])
def test_every_name_leads_to_the_class_of_that_name(registry, kind):
    for name in registry:
        model = registry[name]
        assert issubclass(model, kind) and model.name == name


def test_names_are_known_without_importing_a_model():
    probe = (
        "import sys; from aesq.models import SCORERS, EMBEDDERS; "
        "assert 'laion-aes-v2' in SCORERS and 'clip-vit-l-14' in EMBEDDERS and sorted(SCORERS); "
        "print(sorted(m for m in ('torch', 'scipy', 'transformers', 'aesq.models.laion') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_an_unknown_name_is_a_key_error():
    with pytest.raises(KeyError):
        SCORERS["nosuch"]
