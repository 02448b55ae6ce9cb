"""Notebook → workflow, on notebooks written by the tests with nbformat."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from typer.testing import CliRunner

import velocitymesh as vm
from velocitymesh.errors import UsageError
from velocitymesh.jupyter.convert import notebook_to_workflow
from velocitymesh.jupyter.workspace import LocalWorkspace


def notebook(*cells: tuple[str, str] | str) -> Any:
    """Cells as (tags, source) or markdown text; tags comma-free, space-separated."""
    nb = nbformat.v4.new_notebook()
    for cell in cells:
        if isinstance(cell, str):
            nb.cells.append(nbformat.v4.new_markdown_cell(cell))
        else:
            tags, source = cell
            nb.cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": tags.split()} if tags else {}))
    return nb


SALES = notebook(
    "# Sales report\nTotals per region.",                                      # 1
    ("", "import json\nimport statistics as st\n%matplotlib inline\n"
         "ROUND = 2\nraw = open('big.csv').read()  # exploration only\n"
         "def fmt(x):\n    return round(x, ROUND)\n"),                          # 2 setup
    ("parameters", "region = 'north'\nlimit = 3\nweights = [1, 2]\n"),          # 3
    ("step", "rows = [{'region': region, 'amount': a} for a in range(limit)]"),  # 4 plain: last name → id rows
    ("", "rows[:2]  # looking at the data, not a step"),                       # 5 untagged, not a definition
    ("step:total", "def add_up(rows):\n    return sum(r['amount'] for r in rows)"),  # 6 function cell
    ("step:mean needs:total", "values = [r['amount'] for r in rows]\nfmt(st.mean(values))"),  # 7 final expression
    ("step:report", "text = json.dumps({'total': total, 'mean': mean})\nprint(text)\nresult = text"),  # 8
)


def test_tags_parameters_setup_and_inferred_needs() -> None:
    wf = notebook_to_workflow(SALES, name="sales")
    spec = wf.spec
    assert spec.description == "Sales report"
    assert {k: (v.type, v.default) for k, v in spec.inputs.items()} == {
        "region": ("string", "north"), "limit": ("integer", 3), "weights": ("array", [1, 2])}
    assert [(s.id, s.needs) for s in spec.steps] == [
        ("rows", []), ("total", ["rows"]), ("mean", ["rows", "total"]), ("report", ["total", "mean"])]
    rows, total, mean, report = spec.steps
    assert rows.with_["args"] == {"region": "{{ inputs.region }}", "limit": "{{ inputs.limit }}"}
    assert rows.with_["code"].startswith("def main(limit, region):") and "return rows" in rows.with_["code"]
    assert total.with_["function"] == "add_up" and total.with_["args"] == {"rows": "{{ steps.rows.output }}"}
    code = mean.with_["code"]
    # only the definitions the step uses, imports first; exploration code never
    assert "import statistics as st" in code and "ROUND = 2" in code and "def fmt(x)" in code
    assert "import json" not in code and "open(" not in code and "matplotlib" not in code
    assert "return fmt(st.mean(values))" in code
    assert report.with_["args"] == {"total": "{{ steps.total.output }}", "mean": "{{ steps.mean.output }}"}
    assert "import json" in report.with_["code"] and report.with_["code"].rstrip().endswith("return result")


def test_the_converted_workflow_runs(ws: LocalWorkspace, tmp_path: Path) -> None:
    path = tmp_path / "Sales Report.ipynb"
    nbformat.write(SALES, path)
    wf = vm.from_notebook(path)
    assert wf.name == "sales-report"
    run = wf.run(limit=4)
    assert run.status == "succeeded", run.error
    assert run.outputs["rows"][3] == {"region": "north", "amount": 3}
    assert run.outputs["total"] == 6 and run.outputs["mean"] == 1.5
    assert run.output == '{"total": 6, "mean": 1.5}'
    assert run.steps["report"].logs[0]["message"] == run.output


def test_multiline_strings_keep_their_value() -> None:
    nb = notebook(("step:query", 'sql = """select 1\n    from t"""\nsql'))
    code = notebook_to_workflow(nb, name="q").spec.steps[0].with_["code"]
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    assert namespace["main"]() == "select 1\n    from t"


def test_problems_name_the_cells() -> None:
    nb = notebook(
        "# cycles and missing cells",                     # 1
        ("step:a needs:c", "x = 1"),                       # 2
        ("step:b", "y = x + 1"),                           # 3 reads x from a
        ("step:c needs:b", "z = 2"),                       # 4 → cycle a → c → b → a
        ("step:d needs:ghost", "w = 1"),                   # 5 missing
        ("needs:a", "print('not a step')"),                # 6 needs without step
        ("step:a", "q = 1"),                               # 7 duplicate id
        ("step", "v = later_name + 1"),                    # 8 unknown name
        ("step:later_name", "later_name = 5"),             # 9
        ("step:shell", "!ls\nr = 1"),                      # 10 IPython syntax in a step
    )
    with pytest.raises(UsageError) as info:
        notebook_to_workflow(nb, name="bad")
    text = str(info.value)
    assert "cell 5: needs:ghost points to no step cell" in text
    assert "cell 6 has a needs: tag but no step tag" in text
    assert "cells 2 and 7 both define step 'a'" in text
    assert "cell 8 reads 'later_name', which no earlier cell defines" in text and "cell 9 below provides it" in text
    assert "cell 10 uses IPython magics" in text
    assert "cycle: cell 2 (a) → cell 4 (c) → cell 3 (b) → cell 2 (a)" in text


def test_parameters_must_be_literals_and_syntax_errors_are_located() -> None:
    with pytest.raises(UsageError, match=r"cell 1 \(parameters\): n is not a literal"):
        notebook_to_workflow(notebook(("parameters", "n = len('abc')")), name="p")
    with pytest.raises(UsageError, match="cell 2: syntax error on line 1"):
        notebook_to_workflow(notebook("# x", ("step", "def (")), name="p")


def test_import_notebook_command(tmp_path: Path, vm_env: Path) -> None:
    from velocitymesh.cli import app
    from velocitymesh.settings import get_settings

    path = tmp_path / "sales.ipynb"
    nbformat.write(SALES, path)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["import-notebook", str(path), "--name", "sales", "--save"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "name: sales" in result.stdout and "kind: python" in result.stdout
    assert "saved sales v1" in result.stderr
    assert vm.load("sales").step_ids == ["rows", "total", "mean", "report"]
    bad = tmp_path / "bad.ipynb"
    nbformat.write(notebook(("step:a needs:nope", "x = 1")), bad)
    result = CliRunner().invoke(app, ["import-notebook", str(bad)])
    assert result.exit_code == 1 and "cell 1: needs:nope points to no step cell" in result.stderr
