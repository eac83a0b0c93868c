"""``python -m trainables docs [--check]``: the README's method tables, generated from the method declarations.

Each table sits between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` markers in README.md; ``docs``
rewrites what is between them, ``docs --check`` exits 1 naming every table that differs from the
declarations (a table edited by hand, or a declaration changed without regenerating).
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .params import FIXED, Param, describe_condition, knobs_of

README = Path(__file__).resolve().parents[1] / "README.md"


def _ordered(methods: Mapping[str, type]) -> list[type]:
    return sorted(methods.values(), key=lambda cls: (cls.order, cls.name))


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _summary(cls: type) -> str:
    """First line of the class docstring (else the module's): what the method trains."""
    own = cls.__dict__.get("__doc__")
    doc = inspect.cleandoc(own) if own else inspect.getdoc(sys.modules[cls.__module__]) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ").replace("``", "`").replace("|", "\\|")


def methods_table(methods: Mapping[str, type]) -> str:
    rows = ["| method | label | keys (defaults) | what it trains | source |", "|---|---|---|---|---|"]
    for cls in _ordered(methods):
        keys = ", ".join(f"`{p.name}` ({_value(p.default)})" for p in cls.params) or "–"
        rows.append(f"| `{cls.name}` | {cls.label} | {keys} | {_summary(cls)} | {cls.source or '–'} |")
    return "\n".join(rows)


def _knob_text(p: Param) -> str:
    condition = describe_condition(p.when)
    return f"`{p.name}` {p.search.describe()}" + (f" ({condition})" if condition else "")


def search_table(methods: Mapping[str, type], common: Iterable[Param]) -> str:
    common_text = ", ".join(_knob_text(p) for p in common if p.search is not None)
    rows = [f"Every method also searches {common_text}.", "", "| method | knobs |", "|---|---|"]
    for cls in _ordered(methods):
        own = [p for p in cls.params if p.search is not None]
        if cls.search_space is FIXED or not own:
            text = "fixed: only the common knobs"
        else:
            text = ", ".join(_knob_text(p) for p in own)
        rows.append(f"| `{cls.name}` | {text} |")
    return "\n".join(rows)


def keys_table(methods: Mapping[str, type]) -> str:
    rows = ["| method | key | default | allowed | searched | meaning |", "|---|---|---|---|---|---|"]
    for cls in _ordered(methods):
        for p in cls.params:
            searched = knobs_of([p]) and p.search.describe()
            condition = describe_condition(p.when)
            meaning = p.doc + (f" ({condition})" if condition and not p.search else "")
            rows.append(f"| `{cls.name}` | `{p.name}` | {_value(p.default)} | {p.allowed_text()} | "
                        f"{searched or '–'} | {meaning.replace('|', '/')} |")
    return "\n".join(rows)


def generate(methods: Mapping[str, type] | None = None) -> dict[str, str]:
    """``{marker name: markdown}`` of every generated table.

    Default: the methods of ``trainables.methods`` (a method registered from elsewhere, e.g. a study's plugin,
    is not part of this README).
    """
    from .config import LOOP_PARAMS
    from .methods import METHODS

    if methods is None:
        methods = {n: cls for n, cls in METHODS.items() if cls.__module__.startswith(f"{__package__}.methods.")}
    return {
        "methods": methods_table(methods),
        "method-keys": keys_table(methods),
        "search-spaces": search_table(methods, LOOP_PARAMS),
    }


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {re.escape(name)}:begin -->\n)(.*?)(<!-- {re.escape(name)}:end -->)", re.S)


def render(text: str, tables: Mapping[str, str]) -> str:
    """``text`` with each marked block replaced by its generated table (ValueError when a marker is missing)."""
    for name, table in tables.items():
        pattern = _block(name)
        if not pattern.search(text):
            raise ValueError(f"README has no '<!-- {name}:begin -->' ... '<!-- {name}:end -->' block")
        text = pattern.sub(lambda m, table=table: f"{m.group(1)}{table}\n{m.group(3)}", text, count=1)
    return text


def differing(text: str, tables: Mapping[str, str]) -> list[str]:
    """Names of the tables whose block in ``text`` differs from the generated one."""
    out = []
    for name, table in tables.items():
        found = _block(name).search(text)
        if found is None or found.group(2) != f"{table}\n":
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainables docs", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 when a README table differs; write nothing")
    parser.add_argument("--readme", type=Path, default=README, help="the README to rewrite or check")
    args = parser.parse_args(argv)
    try:
        text = args.readme.read_text()
        tables = generate()
        if args.check:
            stale = differing(text, tables)
            if stale:
                print(f"error: README tables differ from the method declarations: {', '.join(stale)} "
                      "(run `python -m trainables docs`)", file=sys.stderr)
                return 1
            return 0
        new = render(text, tables)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if new != text:
        args.readme.write_text(new)
    print(f"{args.readme}: {', '.join(tables)} tables up to date")
    return 0
