"""Type-check the TensorRT backend against TensorRT's Python API, where TensorRT cannot be installed.

``tensorrt-stubs`` (installed with ``--no-deps``: its ``tensorrt`` dependency needs NVIDIA's
libraries) describes TensorRT 10.13's Python API as ``tensorrt/__init__.pyi`` and
``tensorrt_bindings/tensorrt.pyi``. mypy cannot use them as installed: the folder has no
``py.typed`` marker, and a few generated signatures are not valid Python (a parameter named
``in``; a parameter without a default after ones with defaults), and mypy stops at a syntax error in
a stub. So :func:`prepare_stubs` copies them into ``.cache/typings`` (``[tool.mypy] mypy_path``) with
exactly those lines repaired, each repair logged, and :func:`main` runs mypy on the TensorRT
backend modules (``[tool.mypy] files``). ``make lint`` runs it: a call, attribute or flag that
TensorRT's API lacks fails the lint.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

TYPINGS = Path(".cache/typings")  # [tool.mypy] mypy_path
_IN_PARAM = re.compile(r"(?<=[(,\s])in(?=: )")
_DEFAULT = re.compile(r"(\w+: [^,()=]+(?:\[[^\]]*\])?) = [^,()]+")


def _valid(line: str) -> bool:
    try:
        ast.parse(line.strip() + " ...")
    except SyntaxError:
        return False
    return True


def repair(line: str) -> str:
    """``line`` of a stub, made valid Python when it is a ``def`` that is not.

    A parameter named ``in`` becomes ``in_``; if the signature is still invalid (a parameter without
    a default after defaulted ones), the defaults are dropped, which only makes those parameters
    required for the checker. Other lines come back as they are.
    """
    if not line.lstrip().startswith("def ") or _valid(line):
        return line
    fixed = _IN_PARAM.sub("in_", line)
    if not _valid(fixed):
        fixed = _DEFAULT.sub(r"\1", fixed)
    return fixed


def prepare_stubs(target: Path = TYPINGS) -> list[str]:
    """Copy TensorRT's installed stubs into ``target``, repaired (:func:`repair`); the repaired lines.

    Raises:
        SystemExit: When ``tensorrt-stubs`` is not installed.
    """
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("tensorrt-stubs is not installed: pip install --no-deps tensorrt-stubs")
    bindings = Path(next(iter(spec.submodule_search_locations)))
    package = bindings.parent / "tensorrt"
    repaired = []
    for source in [package / "__init__.pyi", *sorted(bindings.glob("*.pyi"))]:
        out = target / source.parent.name / source.name
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
        fixed = [repair(line) for line in lines]
        repaired += [f"{source.name}:{i + 1}" for i, (a, b) in enumerate(zip(lines, fixed, strict=True)) if a != b]
        out.write_text("".join(fixed), encoding="utf-8")
    return repaired


def main(argv: list[str] | None = None) -> int:
    """Prepare the stubs and run mypy with the project's configuration; mypy's exit status."""
    from mypy import api

    repaired = prepare_stubs()
    print(f"tensorrt stubs prepared in {TYPINGS} ({len(repaired)} signatures repaired: {', '.join(repaired)})")
    out, err, status = api.run(list(argv if argv is not None else sys.argv[1:]))
    sys.stdout.write(out)
    sys.stderr.write(err)
    return status


if __name__ == "__main__":
    sys.exit(main())
