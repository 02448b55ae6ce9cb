"""Notebook authoring: the Python API, live widgets, notebook → workflow, IPython magics.

``import velocitymesh as vm`` gives the API (``vm.Workflow``, ``vm.workspace``, ``vm.load``,
``vm.generate``, ``vm.from_notebook`` …); ``%load_ext velocitymesh.jupyter`` adds the
``%vm_workflow`` and ``%%vm_step`` magics. Modules:

    api.py        the Workflow builder, load, generate
    capture.py    a notebook function → the code of a python step
    names.py      free names of a cell (what it reads from earlier cells)
    workspace.py  local workspace (store + in-process engine); remote.py: a server over REST
    runner.py     the background event loop the engine runs on
    results.py    Run, StepRecord, Version
    dag.py        SVG drawing of a workflow; widgets.py: live run and generate widgets
    convert.py    notebook → workflow; magics.py: %%vm_step
    debug.py      a failed run as a notebook; kernel.py: kernelspec and `velocitymesh lab`
"""

from __future__ import annotations

from typing import Any


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext velocitymesh.jupyter``: registers ``%vm_workflow`` and ``%%vm_step``."""
    from velocitymesh.jupyter.magics import register

    register(ipython)
