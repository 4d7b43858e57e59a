"""Webhooks: an account registers URLs for events; the worker's relay turns the outbox's event
rows (written with the changes they describe) into deliveries, one lane per webhook and deal, in
order, at least once, each attempt an RQ job, signed with the webhook's secret, retried with
exponential back-off, and its last outcome recorded on the webhook row.

signing.py   the Standard Webhooks signature headers and secrets (and how a receiver verifies them)
service.py   register / list / get / delete, and recording an attempt on the webhook row
outbox.py    the relay (events numbered, fanned out, lane heads leased and enqueued) and the
             event feed of GET /v1/events
delivery.py  one delivery attempt (run by the RQ job `workers.jobs.deliver_webhook`)
dispatch.py  the event sink the services emit to after their commit: counters for /metrics;
             the retry policy
addresses.py which receivers a delivery may reach
"""
