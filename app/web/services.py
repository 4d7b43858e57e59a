from flask import current_app

from app.wiring import Services


def services() -> Services:
    return current_app.extensions["offer_engine"]
