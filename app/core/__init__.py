"""The domain's shared kernel: what every domain package speaks, and nothing that speaks HTTP.

errors.py       the refusals every domain package shares (unavailable, a key reused or in use)
idempotency.py  what a keyed write is, and the answers kept for keys
events.py       what the domain announces after a commit
money.py        minor units and decimal amounts
timeutil.py     instants as Redis and SQL keep them
ttlcache.py     the one time-limited cache, with `now` given
jsonutil.py     JSON out, fast (orjson)

It imports the stores, never the domain packages above it (accounts, inventory, webhooks).
"""
