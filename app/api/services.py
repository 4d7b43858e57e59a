from flask import current_app

from app.services import Services


def services() -> Services:
    return current_app.extensions["offer_engine"]
