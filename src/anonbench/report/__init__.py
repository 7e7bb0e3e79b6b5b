"""The study report: one module per question (q1_methods ... q8_relabel, coverage, drift, header).

``context`` holds what every section uses, ``doc`` the document model rendered as Markdown and HTML,
``charts`` the chart types, ``sections`` the reading order; :mod:`anonbench.stages.report` is the stage.
"""
