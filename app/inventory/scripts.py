"""Loads the Lua scripts in ./lua once and calls them by SHA.

Each script is the reply codes (`Code`, as Lua locals), `lib.lua` and the script's own file.
redis-py's `Script` sends EVALSHA and, on NOSCRIPT (a restarted server or a failover), loads the
script and retries. In pipelines a script is a plain EVALSHA, and `LiveStock._pipelined` loads
the scripts and runs the pipeline again on NOSCRIPT.
"""

from __future__ import annotations

import enum
from functools import cache
from importlib import resources
from typing import Any

from redis.client import Pipeline
from redis.cluster import ClusterPipeline
from redis.commands.core import Script

NAMES = (
    "reserve",
    "claim",
    "buy",
    "adopt",
    "give_back",
    "release",
    "extend",
    "forget",
    "wait",
    "unwait",
    "offered",
    "trim_offered",
    "sweep",
    "snapshot",
    "held",
    "load",
    "index_set",
)


class Code(enum.IntEnum):
    """First element of every script reply; the scripts see each as a local of the same name."""

    OK = 0
    NOT_LOADED = 1
    NOT_FOUND = 2
    SOLD_OUT = 3
    OVER_PURCHASE_LIMIT = 4
    OVER_USER_LIMIT = 5
    NOT_HELD = 6
    PRICE_CHANGED = 7
    FOUND = 8
    NOT_OWNER = 9
    NEGATIVE = 10
    NOT_STARTED = 11
    SALE_ENDED = 12
    OTHER_USER = 13
    REFUSED = 14
    TOO_OLD = 15


class UnknownReply(RuntimeError):
    """A script answered with a code this module does not know: a bug, never a user error."""


@cache
def source(name: str) -> str:
    lua = resources.files("app.inventory") / "lua"
    codes = "".join(f"local {code.name} = {code.value}\n" for code in Code)
    return codes + (lua / "lib.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


class Scripts:
    """The registered scripts for one Redis client (a single server or a cluster)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._scripts: dict[str, Script] = {name: client.register_script(source(name)) for name in NAMES}

    def __call__(self, name: str, keys: list[str], args: list[Any], client: Any = None) -> list:
        if isinstance(client, (Pipeline, ClusterPipeline)):
            # A plain EVALSHA: a `Script` queued in a pipeline makes redis-py ask the server
            # SCRIPT EXISTS first, a round trip of its own every time (and cluster pipelines
            # refuse evalsha() outright). LiveStock._pipelined loads the scripts and runs the
            # pipeline again on NOSCRIPT.
            return client.execute_command("EVALSHA", self.sha(name), len(keys), *keys, *args)
        return self._scripts[name](keys=keys, args=args, client=client)

    def sha(self, name: str) -> str:
        return self._scripts[name].sha

    def script(self, name: str) -> Script:
        return self._scripts[name]

    def load_all(self) -> None:
        """SCRIPT LOAD every script (on a cluster: on every master)."""
        for script in self._scripts.values():
            script.sha = self.client.script_load(script.script)


def code_of(reply: list) -> Code:
    try:
        return Code(int(reply[0]))
    except (ValueError, IndexError, TypeError):
        raise UnknownReply(f"unexpected script reply {reply!r}") from None
