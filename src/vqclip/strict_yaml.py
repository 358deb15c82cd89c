"""YAML that refuses a key given twice in one mapping. PyYAML keeps the last value silently, so `steps: 300` and,
lower down, `steps: 3` would run 3 steps with no word; here it is an error naming both lines. A key that a
merge (`<<: *base`) brings in may still be overridden, as YAML intends. Safe types only (`yaml.SafeLoader`).
"""

from __future__ import annotations

from typing import Any

import yaml

_MERGE = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping key given twice; `key`, and the 1-based lines of its first and second use."""

    def __init__(self, key: Any, first: yaml.Node, again: yaml.Node, mapping: yaml.Node) -> None:
        self.key, self.first_line, self.line = key, first.start_mark.line + 1, again.start_mark.line + 1
        where = f"line {self.line}" if self.first_line == self.line else f"lines {self.first_line} and {self.line}"
        super().__init__("while reading a mapping", mapping.start_mark, f"key {key!r} appears twice ({where})",
                         again.start_mark)


class StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that raises DuplicateKeyError on a repeated mapping key."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader reports it below
                    continue
                if first is not key_node:
                    raise DuplicateKeyError(key, first, key_node, node)
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """The YAML document in `text`, safe types only; DuplicateKeyError (a `yaml.YAMLError`) on a repeated key."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (StrictLoader is a SafeLoader)
