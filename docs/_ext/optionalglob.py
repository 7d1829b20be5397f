"""A ``:glob:`` toctree whose patterns may match no page yet.

``docs/deploying.rst`` lists ``deploying/*``: pages that are added one by one
(per server, behind PgBouncer, read replicas). Sphinx warns about a glob that
matches nothing, and the docs are built with ``-W``, so this replaces the
``toctree`` directive with one that renders nothing when every pattern of a
globbed, otherwise empty toctree matches no document. Any other toctree is
Sphinx's own, unchanged.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.directives.other import TocTree
from sphinx.util import docname_join
from sphinx.util.matching import patfilter

GLOB_CHARACTERS = frozenset("*?[")


class OptionalGlobTocTree(TocTree):
    def run(self) -> list[nodes.Node]:
        entries = [line.strip() for line in self.content if line.strip()]
        if "glob" in self.options and entries and all(GLOB_CHARACTERS & set(e) for e in entries):
            env = self.state.document.settings.env
            if not any(
                patfilter(env.found_docs, docname_join(env.docname, entry)) for entry in entries
            ):
                return []
        return super().run()


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("toctree", OptionalGlobTocTree, override=True)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
