"""Document analysis for the ``report`` job kind: XLSX workbooks, PDFs and images in, one JSON
result (``docs/report_schema.json``), an HTML page and an XLSX report out.

Flask-free and database-free: the kind calls ``analyze`` on its executor thread, then
``render_html`` / ``write_xlsx`` on the result. Bad documents raise ``JobFailed`` with the codes
listed in ``service.reports.errors``; limits are the ``REPORT_*`` keys in
``service.reports.settings``.
"""
from service.reports.analysis import analyze
from service.reports.render import render_html, write_xlsx
from service.filetypes import sniff

__all__ = ["analyze", "render_html", "sniff", "write_xlsx"]
