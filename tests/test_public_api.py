"""The public surface is pinned: adding or removing a name is a deliberate change."""

import subprocess
import sys

import velocitymesh

EXPECTED = {
    "__version__", "Settings", "get_settings", "Workflow", "Step", "load_workflow_file", "load_workflow_text",
    "dump_workflow", "Problem", "validate_workflow", "check_workflow", "Engine", "RunResult", "StepContext",
    "StepResult", "VelocityMeshError", "UsageError", "SpecError", "StepError",
}


def test_exported_members() -> None:
    assert set(velocitymesh.__all__) == EXPECTED
    for name in EXPECTED - {"__version__"}:
        assert getattr(velocitymesh, name) is not None


def test_import_is_light() -> None:
    """`import velocitymesh` must not pull in the heavy stacks (they cost seconds)."""
    code = (
        "import sys, velocitymesh; heavy = [m for m in ('prefect', 'panel', 'sqlalchemy', 'anthropic', "
        "'openai', 'duckdb', 'fastapi', 'jinja2') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
