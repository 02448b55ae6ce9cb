"""`%vm_workflow` and `%%vm_step` through IPython's own shell, in-process."""

from __future__ import annotations

import pytest
from conftest import Cells

from velocitymesh.jupyter import magics
from velocitymesh.jupyter.workspace import LocalWorkspace


@pytest.fixture
def nb(cells: Cells) -> Cells:
    magics.state.__init__()  # type: ignore[misc]
    cells("%load_ext velocitymesh.jupyter")
    return cells


def test_cells_become_steps_and_still_run(nb: Cells, ws: LocalWorkspace, capsys: pytest.CaptureFixture[str]) -> None:
    wf = nb("wf = %vm_workflow magic-demo\nwf")
    assert wf.name == "magic-demo" and nb("%vm_workflow") is wf
    nb("import math\nFACTOR = 3\nn = 4\nwf.input('n', 4)")
    nb("%%vm_step numbers\nvalues = list(range(n))")
    assert nb.ns["values"] == [0, 1, 2, 3]  # the cell ran in the notebook too
    nb("%%vm_step scaled\nscaled = [math.sqrt(v) * FACTOR for v in values]")
    nb("%%vm_step report numbers --no-run\nlen(values)")
    out = capsys.readouterr().out
    assert "step 'numbers' added to workflow 'magic-demo'" in out and "(needs numbers)" in out
    assert "report" not in nb.ns
    spec = wf.spec
    assert [(s.id, s.needs) for s in spec.steps] == [("numbers", []), ("scaled", ["numbers"]), ("report", ["numbers"])]
    numbers, scaled, _ = spec.steps
    assert numbers.with_["args"] == {"n": "{{ inputs.n }}"}
    # `values` is bound to the step that assigned it; math and FACTOR come from the namespace
    assert scaled.with_["args"] == {"values": "{{ steps.numbers.output }}"}
    assert "import math" in scaled.with_["code"] and "FACTOR = 3" in scaled.with_["code"]
    run = wf.run(n=3)
    assert run.status == "succeeded", run.error
    assert run.outputs["report"] == 3 and run.outputs["scaled"][1] == 3.0


def test_magic_errors_are_one_line_usage_errors(nb: Cells) -> None:
    result = nb.shell.run_cell("%%vm_step orphan\nx = 1")
    assert result.error_in_exec is not None and "there is no current workflow" in str(result.error_in_exec)
    nb("%vm_workflow errs")
    result = nb.shell.run_cell("%%vm_step bad\ny = nothing_defines_this + 1")
    assert "nothing_defines_this" in str(result.error_in_exec)
    result = nb.shell.run_cell("%%vm_step\nz = 1")
    assert "needs a step id" in str(result.error_in_exec)
    result = nb.shell.run_cell("%%vm_step two ghost\nz = 1")
    assert "needs ghost" in str(result.error_in_exec)


def test_load_continues_a_saved_workflow(nb: Cells, ws: LocalWorkspace) -> None:
    nb("wf = %vm_workflow saved-one")
    nb("%%vm_step first\nfirst = 41")
    nb("wf.save('v1')")
    again = nb("%vm_workflow saved-one --load")
    assert again.step_ids == ["first"] and again.saved_version == 1
    nb("%%vm_step second\nsecond = first + 1")
    assert again["second"].needs == ["first"]
    assert again.run().output == 42
