"""Webhooks: an account registers URLs for purchase and deal events; each event becomes one RQ
delivery job per matching URL, signed with the webhook's secret, retried with exponential
back-off, and its last outcome recorded on the webhook row.

signing.py   the Standard Webhooks signature headers and secrets (and how a receiver verifies them)
service.py   register / list / get / delete, and the in-process cache of an account's targets
dispatch.py  the event sink the services emit to: metrics, then deliveries for subscribed URLs
delivery.py  one delivery attempt (run by the RQ job `workers.jobs.deliver_webhook`)
"""
