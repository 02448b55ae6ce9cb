"""The YAML editor of the workflow page: validates as you type, lists the problems by
path, marks their lines in the gutter and redraws the graph.

``check_draft`` is the pure part (text → problems, spec, graph data); ``YamlEditor``
wires it to the Ace editor with a debounce, so a burst of keystrokes costs one
validation. The editor is ``collab.LiveCodeEditor``: on a saved workflow it is bound to the
workflow's live draft (``collab.LiveBinding``), and validation then follows the merged text,
whoever typed it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from velocitymesh.server.dashboard import theme
from velocitymesh.server.dashboard.collab import LiveCodeEditor
from velocitymesh.server.dashboard.dag import nodes_from_data, render_svg
from velocitymesh.server.dashboard.session import PageContext
from velocitymesh.server.dashboard.theme import esc
from velocitymesh.server.dashboard.yamlpaths import ace_annotations
from velocitymesh.workspace.problems import Problem
from velocitymesh.workspace.spec import Workflow

DEBOUNCE_SECONDS = 0.25

STARTER = """\
name: my-workflow
description: What this workflow does, in one line
inputs:
  who: {type: string, default: world}
steps:
  - id: greet
    kind: transform
    with:
      value: "Hello, {{ inputs.who }}!"
"""

PROBLEMS_CSS = """
ul.problems { list-style: none; margin: 0; padding: 0; }
ul.problems li { padding: 7px 0; border-bottom: 1px solid #f1f5f9; font-size: 13px; }
ul.problems .path { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; background: #f1f5f9;
                    padding: 1px 6px; border-radius: 4px; margin-right: 6px; }
ul.problems .hint { color: #64748b; display: block; margin-top: 2px; }
ul.problems .error::before { content: "●"; color: #dc2626; margin-right: 6px; }
ul.problems .warning::before { content: "●"; color: #d97706; margin-right: 6px; }
.state { font-size: 13px; font-weight: 600; }
.state.valid { color: #16a34a; } .state.invalid { color: #dc2626; } .state.dirty { color: #d97706; }
"""


@dataclass
class DraftCheck:
    """What the validator made of the editor's text."""

    text: str
    problems: list[Problem] = field(default_factory=list)
    spec: Workflow | None = None  # set only when there is no error
    data: Any = None  # the parsed document, even when invalid (for the graph)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def valid(self) -> bool:
        return self.spec is not None


def check_draft(text: str) -> DraftCheck:
    """Validate ``text`` with the step kinds known (never raises)."""
    from velocitymesh.errors import SpecError
    from velocitymesh.flows.validation import parse_and_validate_workflow
    from velocitymesh.workspace.yamlio import load_data

    try:
        data = load_data(text)
    except SpecError:
        data = None
    spec, problems = parse_and_validate_workflow(text)
    if any(p.severity == "error" for p in problems):
        spec = None
    return DraftCheck(text=text, problems=list(problems), spec=spec, data=data)


def problems_html(problems: list[Problem]) -> str:
    if not problems:
        return ""
    items = "".join(
        f'<li class="{esc(p.severity)}">'
        + (f'<span class="path">{esc(p.path)}</span>' if p.path else "")
        + f"{esc(p.message)}"
        + (f'<span class="hint">{esc(p.hint)}</span>' if p.hint else "")
        + "</li>"
        for p in problems
    )
    return f'<ul class="problems">{items}</ul>'


def state_html(check: DraftCheck, *, dirty: bool) -> str:
    errors = len(check.errors)
    warnings = len(check.problems) - errors
    if errors:
        return f'<span class="state invalid">✗ {errors} problem{"s" if errors != 1 else ""}</span>'
    steps = len(check.spec.steps) if check.spec else 0
    note = f", {warnings} warning{'s' if warnings != 1 else ''}" if warnings else ""
    text = f'<span class="state valid">✓ Valid · {steps} step{"s" if steps != 1 else ""}{note}</span>'
    if dirty:
        text += ' <span class="state dirty">· unsaved changes</span>'
    return text


class YamlEditor:
    """Ace editor + problems + graph, validated on a debounce."""

    def __init__(self, ctx: PageContext, text: str, *, saved_hash: str | None = None) -> None:
        self.ctx = ctx
        self.saved_hash = saved_hash
        self.listeners: list[Callable[[DraftCheck], None]] = []
        self.code = LiveCodeEditor(
            value=text, sizing_mode="stretch_width", height=470, indent=2, readonly=not ctx.can_write, margin=(6, 0),
        )
        self.state = theme.html_pane("", stylesheets=[PROBLEMS_CSS], margin=(0, 0, 4, 0))
        self.problems = theme.html_pane("", stylesheets=[PROBLEMS_CSS])
        self.graph = theme.html_pane("", margin=(4, 0))
        self.check = DraftCheck(text=text)
        self.code.param.watch(self._typed, "value")
        self.validate()

    @property
    def text(self) -> str:
        return self.code.value or ""

    @property
    def dirty(self) -> bool:
        return self.check.spec is None or self.check.spec.content_hash() != self.saved_hash

    def set_text(self, text: str) -> None:
        """Replace the content (a restored or generated version) and validate at once; bound to the
        live draft, the draft changes too, for everyone."""
        self.code.value = text  # the watcher schedules a debounced check; this one is immediate
        self.validate()

    def _typed(self, _event: Any) -> None:
        self.ctx.debounce("validate", DEBOUNCE_SECONDS, self.validate)

    def validate(self) -> None:
        check = check_draft(self.text)
        self.check = check
        self.code.annotations = ace_annotations(check.text, check.problems)
        self.state.object = state_html(check, dirty=self.dirty)
        self.problems.object = problems_html(check.problems)
        nodes = nodes_from_data(check.data)
        self.graph.object = render_svg(nodes, empty="The graph appears when the document has steps.")
        for listener in self.listeners:
            listener(check)

    def mark_saved(self, content_hash: str) -> None:
        self.saved_hash = content_hash
        self.state.object = state_html(self.check, dirty=self.dirty)
