"""The report: figures as PNG and the one HTML builder for every section (library code, no Kedro).

* :mod:`~cellsynth.reporting.figures`: matplotlib figures on the Agg canvas and their PNG bytes;
* :mod:`~cellsynth.reporting.html`: :class:`~cellsynth.reporting.html.Table` and
  :class:`~cellsynth.reporting.html.Figure`, a section fragment per analysis
  (:func:`~cellsynth.reporting.html.section`) and the self-contained page that holds them
  (:func:`~cellsynth.reporting.html.page`).
"""
