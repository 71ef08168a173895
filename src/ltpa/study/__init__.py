"""The paired evidence study: when does trainable attention help, against controls that isolate it?

``python -m ltpa.study`` (``make study``) runs the design in :mod:`ltpa.study.design` stage by stage (pilot, main,
double, plain, descriptive), writes one committed record per run under ``docs/results/v3/records``, and rebuilds
docs/results.md from those records alone (``python -m ltpa.study report``).

Modules: ``design`` (arms, regimes, measures and comparisons: the one file to edit), ``measures`` (what a run
records per image, and how records become paired values), ``runner`` (stages, pilots, records, parallel
trainings), ``results`` (records loaded for the report; pairing, tests, Holm), ``stats`` (paired t, sign-flip,
Hedges' g, TOST, Holm), ``metrics`` (map, attack and probe maths) and ``report`` (docs/results.md and figures).

To extend it:

* an arm: one ``Arm(...)`` entry in ``design.ARMS`` (model, options, label, colour, pilot grid, role, regimes);
* a measure: its ``measure_*``/``paired_*``/``summary_*`` functions in ``measures`` and one ``Measure(...)``
  entry in ``design.MEASURES`` (then name it in a regime's ``measures``);
* a comparison: one ``Comparison(...)`` row in ``design.PRIMARY`` (before the main stage runs) or
  ``design.SECONDARY``.

``tests/test_study.py`` adds a throwaway arm and measure this way and checks that both reach the report.
"""
