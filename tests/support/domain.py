"""The ApiClient's deal steps (tests/support/api.py), called on the services directly: domain
tests set up deals and holds the way API tests do, without Flask."""

from __future__ import annotations


class Shop:
    def __init__(self, services, account_id: int) -> None:
        self.services = services
        self.account_id = account_id

    def create_deal(self, **fields) -> dict:
        values = {"title": "Lamp", "price_per_unit": 1999, "quantity": 10}
        values.update(fields)
        return self._deal(self.services.deals.create(self.account_id, **values))

    def deal(self, deal_id: int) -> dict:
        return self._deal(self.services.deals.get(self.account_id, deal_id))

    def reserved(self, deal_id: int, units: int = 1) -> dict:
        purchase = self.services.purchases.reserve(self.account_id, deal_id, units)
        return {"id": purchase.token, "deal_id": purchase.deal_id, "quantity": purchase.units}

    @staticmethod
    def _deal(view) -> dict:
        return {
            "id": view.id,
            "quantity": view.quantity,
            "available": view.available,
            "reserved": view.reserved,
            "sold": view.sold,
            "active_holds": view.active_holds,
        }
