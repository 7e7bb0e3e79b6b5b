"""KFP components of the study, one module per stage, each a thin call into ``anonbench``.

Every component runs ``anonbench <stage>`` in the run's workspace through
:func:`anonbench.workspace.run_stage`, the same command a DVC stage runs, and
returns the folder it wrote (a reference, never the data). Component modules do
not use ``from __future__ import annotations``: KFP reads the real annotation
objects to type the inputs and outputs.
"""
