"""Griffe extension: Sphinx roles and math in docstrings become mkdocs-autorefs links and MathJax.

The package's numpydoc docstrings use Sphinx roles (``:func:`available```, ``:meth:`vcov```,
``:class:`pandas.Categorical```). mkdocstrings renders docstrings as Markdown, where a role is
plain text; this extension rewrites each role into an *optional* autoref: a link where the name
resolves to an object documented on the site, the name in code font otherwise (no warning, so a
reference to an object without a page does not fail the strict build). Relative names are
resolved against the object's own scope first (a method's class, then the enclosing modules),
imported names to the object they import. RST math (``.. math::`` blocks, ``:math:`` roles)
becomes arithmatex's ``$$ ... $$`` and ``\\( ... \\)``, which MathJax renders.
"""

from __future__ import annotations

import html
import re
import textwrap

import griffe

_ROLE = re.compile(r":(?:py:)?(func|meth|class|mod|attr|obj|data|exc):`(~?)([^`<>]+?)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
#: an RST ``.. math::`` directive and its indented body (blank lines allowed inside)
_MATH_BLOCK = re.compile(r"^([ \t]*)\.\. math::[ \t]*\n((?:[ \t]*\n)*)((?:\1[ \t]+\S.*\n|[ \t]*\n)+)", re.M)


def _lookup(root: griffe.Object, path: str) -> griffe.Object | None:
    parts = path.split(".")
    if parts[0] != root.name:
        return None
    try:
        return root[".".join(parts[1:])] if len(parts) > 1 else root
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _resolve(obj: griffe.Object, name: str, role: str) -> str:
    """The dotted path ``name`` most likely refers to, seen from ``obj``."""
    name = name.strip().lstrip(".")
    root = obj.package
    path = name
    if not name.startswith(f"{root.name}."):
        head = name.split(".", 1)[0]
        scope: griffe.Object | None = obj if (obj.is_class or obj.is_module) else obj.parent
        while scope is not None:
            if head in scope.members:
                path = f"{scope.path}.{name}"
                break
            scope = scope.parent
    found = _lookup(root, path)
    if found is None:
        return path
    if found.is_alias:
        try:
            path = found.final_target.path
            found = found.final_target
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return path
    last = path.rsplit(".", 1)[-1]
    if role == "func" and found.is_module and last in found.members:  # the function of its own module
        return f"{path}.{last}"
    return path


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`name``` in every docstring into an optional autoref."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: ARG002
        if obj.is_alias or obj.docstring is None:
            return

        def link(match: re.Match) -> str:
            role, short, name = match.group(1), match.group(2), match.group(3).strip()
            shown = name.rsplit(".", 1)[-1] if short else name
            if role in {"func", "meth"}:
                shown = f"{shown}()"
            target = html.escape(_resolve(obj, name, role), quote=True)
            return f'<autoref identifier="{target}" optional><code>{html.escape(shown)}</code></autoref>'

        def math_block(match: re.Match) -> str:
            indent = match.group(1)
            body = textwrap.dedent(match.group(3)).strip("\n")
            return f"{indent}$$\n" + textwrap.indent(body, indent) + f"\n{indent}$$\n\n"

        text = _MATH_BLOCK.sub(math_block, obj.docstring.value)
        text = _MATH_ROLE.sub(lambda m: f"\\({m.group(1)}\\)", text)
        obj.docstring.value = _ROLE.sub(link, text)
