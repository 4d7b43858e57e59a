"""Counting what a request costs: SQL statements and Redis round trips."""

from __future__ import annotations

import redis as redis_py
from sqlalchemy import event


class Calls:
    """Counts SQL statements and Redis round trips."""

    def __init__(self, services, monkeypatch):
        self.sql = 0
        self.redis = 0
        self.statements: list[str] = []
        event.listen(services.db.engine, "before_cursor_execute", self._statement)
        self.engine = services.db.engine
        client = services.redis
        original = client.execute_command
        original_pipeline_execute = redis_py.client.Pipeline.execute

        def execute_command(*args, **kwargs):
            self.redis += 1
            return original(*args, **kwargs)

        def pipeline_execute(pipe, *args, **kwargs):
            self.redis += 1
            return original_pipeline_execute(pipe, *args, **kwargs)

        monkeypatch.setattr(client, "execute_command", execute_command)
        monkeypatch.setattr(redis_py.client.Pipeline, "execute", pipeline_execute)

    def _statement(self, connection, cursor, statement, *args):
        self.sql += 1
        self.statements.append(statement)

    def queries(self) -> list[str]:
        """The SELECTs run since the last reset (not the BEGINs and COMMITs)."""
        return [s for s in self.statements if s.lstrip().upper().startswith("SELECT")]

    def reset(self) -> tuple[int, int]:
        counts = (self.sql, self.redis)
        self.sql = self.redis = 0
        self.statements = []
        return counts

    def close(self):
        event.remove(self.engine, "before_cursor_execute", self._statement)
