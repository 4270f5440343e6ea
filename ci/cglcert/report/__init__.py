"""Reports rendered from results.json (the source of truth) and stress.json.

``model`` loads the runs; ``html`` (Jinja2 template ``reports/templates/report.html.j2``,
charts from ``svg``), ``markdown``, ``junit``, ``ktap`` and ``kcidb`` render them. The
``cglcert report`` command (:mod:`cglcert.commands.report`) writes the files.
"""
