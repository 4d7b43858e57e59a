"""Fault injection for tests/faults/test_outbox.py, loaded by Python at start-up from this
directory on PYTHONPATH (nothing else imports it).

In gunicorn's processes, with OE_KILL_AFTER_COMMIT=<probability>, a web worker SIGKILLs itself
right after a group commit's COMMIT succeeded, before it answers the batch's requests or counts
their events: the moment a process dying loses what it has not written down. Each kill is first
noted (pid and batch size) in the file OE_KILL_LOG names.

The committer is patched when `app.inventory.group_commit` is first imported (an import hook),
so nothing of the app is imported before gunicorn's worker sets up (gevent patches the standard
library first).
"""

import os
import sys

_PROBABILITY = float(os.environ.get("OE_KILL_AFTER_COMMIT") or 0)
_TARGET = "app.inventory.group_commit"


def _patch(module) -> None:
    import random
    import signal

    committer = module.GroupCommitter
    original = committer._transaction

    def _transaction(self, batch, deal_ids, write):
        outcomes = original(self, batch, deal_ids, write)  # returns once COMMIT succeeded
        if random.random() < _PROBABILITY:
            log = os.environ.get("OE_KILL_LOG")
            if log:
                with open(log, "a") as noted:
                    noted.write(f"{os.getpid()} {len(batch)}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return outcomes

    committer._transaction = _transaction


class _PatchOnImport:
    """A meta path finder that lets the normal finders load the committer, then patches it."""

    def find_spec(self, name, path=None, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        try:
            import importlib.util

            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        execute = loader.exec_module

        def exec_module(module):
            execute(module)
            _patch(module)

        loader.exec_module = exec_module
        return spec


if _PROBABILITY > 0 and os.path.basename((getattr(sys, "argv", None) or [""])[0]) == "gunicorn":
    sys.meta_path.insert(0, _PatchOnImport())
