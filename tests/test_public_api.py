"""The public surface is pinned: adding or removing a name is a deliberate change."""

import subprocess
import sys

import velocitymesh

EXPECTED = {
    "__version__", "Settings", "get_settings", "WorkflowSpec", "Step", "load_workflow_file", "load_workflow_text",
    "dump_workflow", "Problem", "validate_workflow", "check_workflow", "Engine", "RunResult", "StepContext",
    "StepResult", "VelocityMeshError", "UsageError", "SpecError", "StepError",
    # notebook authoring: vm.Workflow is the builder; the document model is vm.WorkflowSpec
    "Workflow", "workspace", "Workspace", "Run", "load", "generate", "generate_widget", "from_notebook",
    "write_debug_notebook", "output",
}


def test_exported_members() -> None:
    assert set(velocitymesh.__all__) == EXPECTED
    for name in EXPECTED - {"__version__"}:
        assert getattr(velocitymesh, name) is not None


def test_workflow_is_the_builder_and_workspace_is_callable() -> None:
    from velocitymesh.jupyter.api import Workflow
    from velocitymesh.workspace.spec import Workflow as Spec

    assert velocitymesh.Workflow is Workflow and velocitymesh.WorkflowSpec is Spec
    # the subpackage keeps working beside vm.workspace()
    assert callable(velocitymesh.workspace) and velocitymesh.workspace.spec.Workflow is Spec  # type: ignore[attr-defined]


def test_import_is_light() -> None:
    """`import velocitymesh` must not pull in the heavy stacks (they cost seconds)."""
    code = (
        "import sys, velocitymesh; heavy = [m for m in ('prefect', 'panel', 'sqlalchemy', 'anthropic', "
        "'openai', 'duckdb', 'fastapi', 'jinja2') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
