"""The HTML QC report: one self-contained file a person can review (`segqc report`).

`write_report` turns the output folder of `segqc predict` (or `segqc bench`) into a
report with a summary, evaluation plots when true masks are known, and a sortable,
paginated case table — flagged cases first — with overlay thumbnails.
"""

from segqc.report.build import find_table, write_report

__all__ = ["write_report", "find_table"]
