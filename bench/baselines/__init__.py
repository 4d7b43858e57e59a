"""Baselines run under the same gunicorn settings as the app (the Procfile's web line with
another WSGI app): `bare` (the HTTP limit), `rowlock` (the design without Redis) and
`redisonly` (the app's own reserve path with the SQL write taken out)."""
