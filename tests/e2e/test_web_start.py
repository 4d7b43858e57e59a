"""The Procfile's web line refuses to start where it could never serve."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

from app.devtools.embedded import start_procfile_process
from tests.support.servers import free_port


def test_a_port_another_program_listens_on_is_refused_at_start(tmp_path):
    """Each worker binds its own SO_REUSEPORT socket; on a port held by a plain socket they
    could not, and gunicorn would restart them forever while serving nothing."""
    port = free_port()
    holder = socket.create_server(("127.0.0.1", port))
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'web.sqlite3'}", "HOST": "127.0.0.1", "PORT": str(port)}
    try:
        with open(tmp_path / "web.log", "w+") as log:
            web = start_procfile_process("web", env, log)
            try:
                exit_code = web.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(web.pid, signal.SIGKILL)  # gunicorn and its workers, not only bash
                web.wait()
                raise
            log.seek(0)
            output = log.read()
    finally:
        holder.close()
    assert exit_code != 0, output
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in output
