"""The operator console's static files (index.html, app.js, style.css), served by
`sensing_node.api.console` at `/` and under `/console/`."""
