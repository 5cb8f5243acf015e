"""The dashboard: server-rendered pages (Jinja2) with HTMX, Alpine.js and uPlot."""
