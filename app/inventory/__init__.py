"""The inventory: deals, their live stock in Redis, and every write that takes or gives it back.

deals.py         deals with their live numbers
purchases.py     reserve / claim / release / extend / direct purchase flows
ledger.py        the v3 purchases ledger
protocol.py      the write protocol every stock-changing write runs through
group_commit.py  the commit half of it: batches, fences, compensations
writes.py        the SQL half of each write
stock.py         LiveStock: the only code that changes Redis (one Lua script per change)
scripts.py, keys.py, lua/   the scripts, their return codes and every Redis key they use
rebuild.py       Redis rebuilt from SQL, and drift between the two
sweeper.py       ended holds back to stock
serializers.py   a purchase as JSON (the v1 API and the webhooks show the same)
reports.py       what operators read: the dashboard's and the exports' data
errors.py        what can go wrong, as exceptions the edge maps to answers

docs/consistency.md tells why it is safe.
"""
