"""Read a spec file strictly: UTF-8 text, valid YAML, a mapping at the top, no key written twice.

PyYAML keeps the last of two equal keys silently (``epochs: 3`` ... ``epochs: 30``); here every duplicate is a
problem naming its dotted path and the lines of both occurrences. Problems are returned as one line each, so the
launcher reports them with every other spec problem (exit status 2, no traceback).
"""

from __future__ import annotations

import pathlib
from typing import Any

import yaml


def read_spec_text(path: pathlib.Path) -> tuple[str | None, list[str]]:
    """The file's text, or ``None`` and one problem line (missing, a folder, binary, not UTF-8)."""
    if not path.exists():
        return None, [f"spec file {str(path)!r} does not exist: give the path of a YAML spec"]
    if not path.is_file():
        return None, [f"spec file {str(path)!r} is not a file: give the path of a YAML spec"]
    data = path.read_bytes()
    nul = data.find(b"\x00")
    if nul >= 0:
        return None, [f"spec file {str(path)!r} is binary (a NUL byte at offset {nul}), not YAML "
                      "text: give the path of a YAML spec"]
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        return None, [f"spec file {str(path)!r} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}): "
                      "save it as UTF-8"]


def duplicate_keys(text: str) -> list[str]:
    """One problem per key written twice in the same mapping, at any depth (``loss.params.beta``)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    problems: list[str] = []
    _walk(root, "", problems)
    return problems


def _walk(node: Any, path: str, problems: list[str]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            child = f"{path}.{key}" if path else str(key)
            if key is not None and key != "<<":
                line = key_node.start_mark.line + 1
                if key in seen:
                    problems.append(f"{child}: written twice (lines {seen[key]} and {line}); YAML would keep the "
                                    "last one silently: delete one of them")
                else:
                    seen[key] = line
            _walk(value_node, child, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, f"{path}[{index}]", problems)


def load_yaml_spec(path: str | pathlib.Path) -> tuple[dict[str, Any] | None, list[str]]:
    """``(raw spec, [])`` or ``(None, problems)``; never raises for a bad file."""
    text, problems = read_spec_text(pathlib.Path(path))
    if text is None:
        return None, problems
    try:
        problems = duplicate_keys(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, [f"not valid YAML: {exc}".replace("\n", " ")]
    if problems:
        return None, problems
    if not isinstance(raw, dict):
        return None, ["the spec must be a mapping of fields (name:, data:, model:, ...)"]
    return raw, []
