"""Sphinx configuration of the spatialot documentation."""

import shutil
from importlib.metadata import version as _package_version
from pathlib import Path

project = "spatialot"
author = "spatialot developers"
copyright = "2026, spatialot developers"
release = _package_version("spatialot")

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "generated/*.md"]
templates_path = ["_templates"]

autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
# A Returns section is written as reStructuredText (prose, then a definition list of the fields
# a call writes, each term a literal such as ``.obsm['X_wormhole']``) and rendered as it stands.
# napoleon's "params_style" would turn every line into a bold parameter name, and bold cannot
# hold a literal: the terms came out with their double backticks and smart-quoted quotes.
napoleon_custom_sections = ["Returns"]
autodoc_typehints = "description"
# the return annotation stays in the signature; a "Return type" field would land above the
# Returns section, which napoleon renders as written (see napoleon_custom_sections)
autodoc_typehints_description_target = "documented"
myst_enable_extensions = ["dollarmath"]
# The tutorials are rendered with the outputs they were committed with, from their full
# settings; the docs never run them.
nb_execution_mode = "off"

nitpicky = False

html_theme = "pydata_sphinx_theme"
html_title = "spatialot"


def _copy_tutorials(app) -> None:
    """Copy the notebooks of tutorials/ (beside the package, not in docs/) to docs/tutorials/.

    A fresh copy each build, so that a removed notebook leaves no page behind; index.md picks
    up every one with a glob. A copy rather than a symbolic link: Sphinx and MyST resolve the
    links between notebooks through the real path of a link, outside the docs.
    """
    source = Path(app.srcdir).parent / "tutorials"
    target = Path(app.srcdir) / "tutorials"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    for notebook in sorted(source.glob("*.ipynb")):
        shutil.copy2(notebook, target / notebook.name)


def setup(app) -> None:
    """Sphinx extension hook of this configuration: the tutorials are copied before the sources are read."""
    app.connect("builder-inited", _copy_tutorials)
