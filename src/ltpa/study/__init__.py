"""The paired evidence study: does *learned* attention help, against controls that isolate it?

``python -m ltpa.study`` (or ``ltpa study``) trains every arm of the study on cluttered-fashion, evaluates
accuracy, maps, robustness and transfer, and writes docs/results.md. Modules by concern: ``design`` (arms,
pre-registered comparisons), ``data`` (the study's datasets), ``runner`` (resumable stages), ``stats``
(paired tests, Holm, TOST), ``metrics`` (map, robustness and transfer measurements), ``figures`` and
``report`` (one module per report section under ``sections``).
"""
