"""The RQ worker: thin jobs that call the same services as the web app, and the loop that
enqueues the periodic sweep."""
