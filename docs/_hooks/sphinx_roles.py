"""Griffe extension: show the source's reStructuredText roles as code in the API reference.

The docstrings name other objects as ``:func:`refine_batch``` or ``:class:`~nabla_jax.x.Y```;
Markdown has no roles, so the page would print ":func:" before the name. Each role becomes a code
span of its target (the last component for the ``~`` form).
"""

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")


def _code(match: re.Match) -> str:
    target = match.group(2).replace("\n", "").replace(" ", "")
    return f"``{target.rsplit('.', 1)[-1] if match.group(1) else target}``"


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_code, obj.docstring.value)
