"""The documentation as a reader sees it: every public docstring rendered the way Sphinx renders it.

``sphinx-build -W`` does not notice markup that renders as text it was not meant to be (literal
double backticks, code quoted with curly quotes), so these tests render each docstring through
napoleon, with the settings of ``docs/conf.py``, and docutils, with Sphinx's smart quotes, and
read the text a reader would see.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from docutils import nodes
from docutils.core import publish_doctree
from docutils.parsers.rst import roles
from sphinx.ext.napoleon import Config
from sphinx.ext.napoleon.docstring import NumpyDocstring

import spatialot as sot

DOCS = Path(__file__).parents[1] / "docs"
NAMESPACES = ("pp", "tl", "pl", "get", "datasets", "models", "ot")
# Sphinx's cross-reference roles render their target as code; plain docutils does not know them
for _role in ("func", "class", "meth", "mod", "data", "attr", "obj", "exc"):
    roles.register_generic_role(_role, nodes.literal)


def _namespace_objects():
    for namespace in NAMESPACES:
        module = getattr(sot, namespace)
        for name in module.__all__:
            yield f"{namespace}.{name}", getattr(module, name)


def _public_objects():
    yield from _namespace_objects()
    yield "settings", type(sot.settings)


def _documented():
    """Every public function and class, and the public methods and properties a class page shows."""
    for name, obj in _public_objects():
        yield name, obj
        if inspect.isclass(obj):
            for member, value in vars(obj).items():
                if not member.startswith("_") and (inspect.isfunction(value) or isinstance(value, property)):
                    yield f"{name}.{member}", inspect.unwrap(getattr(value, "fget", value))


def _name(value) -> str:
    """Test id: the public name of the object."""
    return value if isinstance(value, str) else ""


def _napoleon_config() -> Config:
    settings: dict = {}
    exec(compile((DOCS / "conf.py").read_text(), "conf.py", "exec"), settings)
    return Config(**{key: value for key, value in settings.items() if key.startswith("napoleon_")})


CONFIG = _napoleon_config()
# models/_wormhole.py is being rewritten on another branch; its Examples come with that work
AWAITING_EXAMPLES: dict[str, str] = {}
# Code in prose: double backticks that did not become a literal, or quote marks that Sphinx made
# curly (an apostrophe, a curly quote between letters or after a plural s, is prose and allowed)
MISRENDERED = re.compile(r"``|[‘“”]|(?<![\w])’(?!s\b)|’(?![\w\s.,;:)])")
CODE = (nodes.literal, nodes.literal_block, nodes.doctest_block, nodes.math, nodes.math_block, nodes.raw)


def rendered_text(docstring: str) -> list[str]:
    """The text of ``docstring`` outside code, after napoleon and docutils (with smart quotes)."""
    source = str(NumpyDocstring(inspect.cleandoc(docstring), CONFIG))
    tree = publish_doctree(
        source, settings_overrides={"smart_quotes": True, "report_level": 5, "halt_level": 5, "language_code": "en"}
    )
    return [
        node.astext()
        for node in tree.findall(nodes.Text)
        if not any(isinstance(parent, CODE) for parent in _ancestors(node))
    ]


def _ancestors(node):
    while node.parent is not None:
        node = node.parent
        yield node


def test_the_check_catches_what_the_returns_lists_used_to_render():
    # the markup and the napoleon setting of before this fix, under the check of this file
    old = Config(napoleon_custom_sections=[("Returns", "params_style")])
    docstring = "Do.\n\nReturns\n-------\nThe model. Writes:\n\n``.obsm['X_{key_added}']``\n    The embedding.\n"
    source = str(NumpyDocstring(docstring, old))
    tree = publish_doctree(source, settings_overrides={"smart_quotes": True, "report_level": 5})
    text = " ".join(node.astext() for node in tree.findall(nodes.Text))
    assert "``.obsm[‘X_{key_added}’]``" in text
    assert MISRENDERED.search(text)
    # and the same docstring with the settings of docs/conf.py renders the term as code
    assert not any(MISRENDERED.search(piece) for piece in rendered_text(docstring))


@pytest.mark.parametrize(("name", "obj"), list(_documented()), ids=_name)
def test_docstrings_render_without_literal_markup_or_curly_code_quotes(name, obj):
    docstring = inspect.getdoc(obj)
    assert docstring, f"{name} has no docstring"
    bad = [piece for piece in rendered_text(docstring) if MISRENDERED.search(piece)]
    assert not bad, f"{name} renders markup as text: {bad}"


@pytest.mark.parametrize(("name", "obj"), list(_public_objects()), ids=_name)
def test_every_public_function_and_class_has_examples(name, obj):
    if name in AWAITING_EXAMPLES:
        pytest.xfail(AWAITING_EXAMPLES[name])
    sections = re.findall(r"^(\w[\w ]*)\n-+$", inspect.getdoc(obj) or "", flags=re.MULTILINE)
    assert "Examples" in sections, f"{name} has no Examples section (sections: {sections})"
    examples = inspect.getdoc(obj).split("Examples\n--------\n", 1)[1]
    assert ">>> " in examples, f"the Examples of {name} hold no code"


def test_the_api_page_lists_every_public_name():
    page = (DOCS / "api.md").read_text()
    missing = [
        name for name, _ in _namespace_objects() if not re.search(rf"^\s+{re.escape(name)}$", page, re.MULTILINE)
    ]
    assert not missing, f"docs/api.md lacks {missing}"


@pytest.mark.parametrize(("name", "obj"), list(_documented()), ids=_name)
def test_shared_parameter_placeholders_are_all_filled(name, obj):
    docstring = inspect.getdoc(obj) or ""
    left = re.findall(r"^\s*\{[a-z_]+\}\s*$", docstring, flags=re.MULTILINE)
    assert not left, f"{name} keeps the unfilled shared-parameter lines {left} (decorate it with inject_docs)"


def test_inject_docs_indents_shared_entries_and_rejects_unknown_names():
    from spatialot._docs import PARAMETERS, inject_docs

    def documented(niche_key="niche"):
        """Do.

        Parameters
        ----------
        {niche_key}
        other
            Not shared; ``{niche_key}`` inside a line stays as written.
        """

    text = inspect.getdoc(inject_docs(documented))
    expected = PARAMETERS["niche_key"]
    assert expected in text and "``{niche_key}``" in text
    # the entry renders as a parameter of the numpydoc section
    assert ":param niche_key:" in str(NumpyDocstring(text, CONFIG))

    def unknown():
        """Do.

        Parameters
        ----------
        {no_such_parameter}
        """

    with pytest.raises(KeyError, match="no_such_parameter"):
        inject_docs(unknown)
