"""The examples in the docstrings of the central public functions run and give what they show."""
import doctest
import importlib

import pytest

# modules whose public docstrings carry examples (landscape.operators and landscape.hvp: tests/test_operators.py)
MODULES = ["landscape.losses.base", "landscape.embedding", "landscape.hessian", "landscape.testing"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert tried > 0, f"{name} has no docstring examples"
    assert failures == 0, f"{name}: {failures} of {tried} examples failed"
