"""What a cell reads before it binds it: the names that become a cell step's parameters."""

from __future__ import annotations

import ast

import pytest

from velocitymesh.jupyter.names import function_free_names, read_names


@pytest.mark.parametrize(("code", "free"), [
    ("y = x + 1", ["x"]),
    ("x = x + 1", ["x"]),  # read before it is bound
    ("x += 1", ["x"]),
    ("x = 1\ny = x", []),
    ("total = 0\nfor i in items:\n    total += i * k", ["items", "k"]),
    ("[a * b for a in rows if a > limit]", ["rows", "limit", "b"]),  # evaluation order
    ("{k: v for k, v in pairs.items()}", ["pairs"]),
    ("f = lambda q: q + offset", ["offset"]),
    ("def helper(z):\n    return z * later\nlater = 2\nhelper(w)", ["w"]),  # bodies run when called
    ("def g():\n    return missing\n", ["missing"]),
    ("class C:\n    size = width\n    def m(self):\n        return C, depth", ["width", "depth"]),
    ("if (n := len(xs)) > 2:\n    print(n)", ["xs"]),
    ("try:\n    v = risky()\nexcept ValueError as e:\n    v = str(e)\nv", ["risky"]),
    ("with open(path) as fh:\n    text = fh.read()", ["path"]),
    ("import json as j\nfrom os import path\nj.dumps(path.sep)", []),
    ("match cmd:\n    case [name, *rest]:\n        out = (name, rest, extra)", ["cmd", "extra"]),
    ("d[key] = value", ["value", "d", "key"]),
])
def test_free_names(code: str, free: list[str]) -> None:
    assert read_names(ast.parse(code)).free == free


def test_function_free_names_leave_locals_and_globals_declared() -> None:
    fn = ast.parse("def f(a, *b, c=1, **d):\n    global counter\n    counter = a + len(b)\n    import math\n"
                   "    def inner():\n        return helper(math.pi, e)\n    e = 3\n    return inner()\n").body[0]
    assert isinstance(fn, ast.FunctionDef)
    assert function_free_names(fn) == ["helper"]  # `counter` is written, not read
