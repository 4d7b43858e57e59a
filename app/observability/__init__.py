"""What the running service tells its operators.

logs.py       structured log lines with the request id
metrics.py    Prometheus metrics (GET /metrics)
telemetry.py  OpenTelemetry traces, off unless asked for

No Flask here: the edge and the worker call these.
"""
