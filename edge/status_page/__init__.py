"""The homeowner's status page, served by the edge agent on the LAN (``[status_page]``).

Pure parts apart from the web app: :mod:`.history` (per-minute flows, today's energy and
money), :mod:`.model` (the status a page shows, from the agent's state), :mod:`.explain`
(who is in control and why, in plain words), :mod:`.chart` (the 24 h chart as SVG, drawn on
the server), :mod:`.auth` (the installer password). :mod:`.app` is the FastAPI app and
:mod:`.server` serves it next to the agent; only those two import FastAPI.
"""
