"""YAML from less-trusted hands: bounded text size and bounded alias expansion ("billion laughs").

PyYAML's ``safe_load`` builds no objects from tags, but an alias is a reference, not a copy: ten lines of nested
aliases load instantly into a graph that expands to billions of nodes the moment anything walks it (validation,
interpolation, a deep copy, a dump). ``load_bounded`` loads with the safe loader and then counts the nodes the
document would have once every alias is expanded, in time linear in the *graph* (memoised per shared node), and
refuses a document over the limit (or a recursive one) before anything walks it.
"""

from __future__ import annotations

from typing import Any

import yaml

from raymlops.errors import ConfigError

__all__ = ["MAX_NODES", "MAX_TEXT_BYTES", "expanded_size", "load_bounded"]

MAX_TEXT_BYTES = 1024 * 1024  # a pipeline config is a few KiB; 1 MiB leaves room for large inline lists
MAX_NODES = 100_000  # expanded values (mappings, lists, scalars); configs/churn.yaml has about 300


def expanded_size(doc: Any, limit: int = MAX_NODES) -> int:
    """Nodes of ``doc`` with every shared (aliased) sub-document counted each time it is referenced.

    Stops counting past ``limit`` (returns a number above it). ``ValueError`` for a recursive document (an alias
    inside its own anchor), which has no finite expansion.
    """
    memo: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, dict | list):
            return 1
        key = id(node)
        if key in memo:
            return memo[key]
        if key in visiting:
            raise ValueError("the document refers to itself (an alias inside its own anchor)")
        visiting.add(key)
        total = 1
        children = list(node.keys()) + list(node.values()) if isinstance(node, dict) else node
        for child in children:
            total += size(child)
            if total > limit:
                break  # already too big: no need to know by how much
        visiting.discard(key)
        memo[key] = total
        return total

    return size(doc)


def load_bounded(text: str, source: str, *, max_bytes: int = MAX_TEXT_BYTES, max_nodes: int = MAX_NODES) -> Any:
    """``yaml.safe_load(text)``, refused with ``ConfigError`` when the text is over ``max_bytes`` or its
    aliases expand to more than ``max_nodes`` values. ``source`` names the document in messages.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ConfigError(f"{source} is {size:,} bytes, over the {max_bytes:,}-byte limit for a config; a config "
                          "holds settings, not data: move large lists to a file the config points to")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source} is not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    except RecursionError:
        raise ConfigError(f"{source} nests too deeply to be a config; flatten it") from None
    try:
        nodes = expanded_size(doc, max_nodes)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}; YAML anchors (&name) may be reused with *name, not inside "
                          "themselves") from None
    except RecursionError:
        raise ConfigError(f"{source} nests too deeply to be a config; flatten it") from None
    if nodes > max_nodes:
        raise ConfigError(f"{source}: its YAML aliases (*name) expand to more than {max_nodes:,} values (an alias "
                          "bomb, or a config that reuses anchors far more than a config needs); write the "
                          "values out or reuse fewer anchors")
    return doc
