"""The documentation site's API page, as mkdocstrings reads the package (with griffe)."""

import re

import pytest

from tests import support

pytestmark = pytest.mark.unit

API_PAGE = support.ROOT / "docs" / "reference" / "api.md"


def documented() -> list:
    griffe = pytest.importorskip("griffe")
    package = griffe.load("pgcelery", search_paths=[str(support.ROOT)])
    return [(path, package[path.removeprefix("pgcelery.")])
            for path in re.findall(r"^::: (\S+)$", API_PAGE.read_text(), re.M)]


def test_the_api_page_renders_the_functions_it_names_not_modules_of_the_same_name():
    kinds = {path: found.kind.value for path, found in documented()}
    assert "pgcelery.notify.notify" in kinds and "pgcelery.testing.deliver" in kinds
    assert [path for path, kind in kinds.items() if kind == "module"] == []


def test_the_documented_docstrings_hold_no_sphinx_roles_that_render_as_text():
    roles = {path: found.docstring.value for path, found in documented()
             if found.docstring and re.search(r":(func|class|meth|data|mod|attr):`",
                                              found.docstring.value)}
    assert roles == {}
