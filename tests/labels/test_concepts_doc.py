import doctest
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "concepts.md"


def test_concepts_examples_run():
    result = doctest.testfile(
        str(DOC),
        module_relative=False,
        optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS,
    )
    assert result.attempted > 10
    assert result.failed == 0
