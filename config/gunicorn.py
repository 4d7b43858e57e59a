"""gunicorn settings, from the same environment variables as everything else.

WEB_CONCURRENCY worker processes (default 2 per core), each with GUNICORN_THREADS threads.
"""

import multiprocessing
import os

from config import load_settings

_settings = load_settings()

bind = f"{_settings.host}:{_settings.port}"
workers = int(os.environ.get("WEB_CONCURRENCY", "") or multiprocessing.cpu_count() * 2)
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = int(os.environ.get("GUNICORN_THREADS", "") or 4)
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "") or 30)
graceful_timeout = 10
keepalive = 5
# A huge request line or header is refused by gunicorn itself (400) before Flask sees it.
limit_request_line = 8190
accesslog = None
errorlog = "-"
loglevel = "warning"


def post_worker_init(worker):
    from app.logs import configure_logging

    configure_logging("web")
