"""Tables, figures and reports from a study dir, read with pandas only.

``analysis`` never imports Ray, torch or ``trainables`` (it reads the study dir through ``study.layout``): a
report can be built on a laptop from a copied study dir, while the study still runs, or after some trials
failed. Entry points: ``analysis.load.load_study``, ``analysis.tables.build_tables``,
``analysis.curves.build_figures`` and ``analysis.report.build_report`` (``python -m analysis STUDY_DIR`` or
``python -m study report STUDY_DIR``).
"""
