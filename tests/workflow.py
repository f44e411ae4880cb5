"""The GitHub workflow as the runner reads it: its job, its steps, and the ``${{ }}`` expressions in them.

Only what the workflow uses of GitHub's expression language is evaluated (contexts, literals, ``==``,
``!=``, ``!``, ``&&``, ``||``, ``format``, ``contains``, ``always``), by translating it to a Python
expression over the given contexts; anything else fails the test, so a workflow change that needs
more cannot pass unnoticed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "retrain.yml"
_EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}")
_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<op>&&|\|\||==|!=|!|\(|\)|,)|(?P<name>[A-Za-z_][\w.\-*]*))")


class Context(dict):
    """A context object: a missing property is null, as in GitHub's expressions."""

    def get_path(self, path: str) -> Any:
        value: Any = self
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value


def load(path: Path = WORKFLOW) -> dict[str, Any]:
    """The workflow file; YAML 1.1 reads the key ``on`` as ``True``, put back here."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["on"] = data.pop(True)
    return data


def _format(template: str, *args: Any) -> str:
    return re.sub(r"\{(\d+)\}", lambda m: _text(args[int(m.group(1))]), template)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def evaluate(expression: str, contexts: dict[str, Any]) -> Any:
    """The value of one expression (the text inside ``${{ }}``, or an ``if:``)."""
    root = Context(contexts)
    out = []
    pos = 0
    text = expression.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise AssertionError(f"expression not understood at {text[pos:]!r}: {expression!r}")
        pos = match.end()
        if match["str"]:
            out.append(repr(match["str"][1:-1].replace("''", "'")))
        elif match["op"]:
            out.append({"&&": " and ", "||": " or ", "!": " not "}.get(match["op"], match["op"]))
        elif match["name"] in ("format", "contains", "always"):
            out.append(f"_{match['name']}")
        elif match["name"] in ("true", "false", "null"):
            out.append({"true": "True", "false": "False", "null": "None"}[match["name"]])
        else:
            out.append(f"_ctx({match['name']!r})")
    functions = {
        "_format": _format,
        "_contains": lambda haystack, needle: needle in (haystack or []),
        "_always": lambda: True,
        "_ctx": root.get_path,
    }
    return eval("".join(out), {"__builtins__": {}}, functions)


def substitute(value: str, contexts: dict[str, Any]) -> str:
    """A string with every ``${{ }}`` in it replaced by its value, as text."""
    return _EXPRESSION.sub(lambda m: _text(evaluate(m.group(1), contexts)), value)


def push_to_main(repository: str = "team/yolo") -> dict[str, Any]:
    """The contexts of a push to main (no inputs, no secrets given)."""
    return {
        "github": {"event_name": "push", "ref": "refs/heads/main", "repository": repository, "event": {}},
        "inputs": {},
        "vars": {},
        "secrets": {},
    }


def pull_request(head_repository: str, repository: str = "team/yolo") -> dict[str, Any]:
    """The contexts of a pull request whose branch lives in ``head_repository``."""
    event = {"pull_request": {"head": {"repo": {"full_name": head_repository}}}}
    return {
        "github": {"event_name": "pull_request", "ref": "refs/pull/7/merge", "repository": repository, "event": event},
        "inputs": {},
        "vars": {},
        "secrets": {},
    }
