"""A griffe extension for the API reference: simdiff's docstrings use reStructuredText roles
(``:class:`Scene```, ``:func:`rollout```) and ``::`` before code blocks, which the Markdown
renderer would show verbatim. Roles become inline code; ``::`` becomes ``:``. The docstrings
themselves stay as they are, readable in ``help()`` and in the source."""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj):`~?([^`]+)`")


class RstRoles(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            text = ROLE.sub(r"`\1`", obj.docstring.value)
            obj.docstring.value = re.sub(r"(\S)::\n", r"\1:\n", text).replace("\n::\n", "\n")
