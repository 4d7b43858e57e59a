"""A keyed write's identity: its purchase token from (account, key), its fingerprint on demand."""

from __future__ import annotations

from app.core.idempotency import Keyed, derived_token, fingerprint


def test_the_fingerprint_is_computed_once_and_only_when_asked():
    computed = []

    def identity() -> str:
        computed.append(1)
        return fingerprint("POST", "/v1/purchases/reserve", {"deal_id": 7, "num_bought": 1})

    keyed = Keyed(1, "checkout-42", identity, lambda result: (200, "{}"))
    assert keyed.token == derived_token(1, "checkout-42")  # a sold-out refusal needs only this
    assert computed == []
    assert keyed.fingerprint == fingerprint("POST", "/v1/purchases/reserve", {"num_bought": 1, "deal_id": 7})
    assert keyed.fingerprint == keyed.fingerprint
    assert computed == [1]


def test_a_renewed_write_keeps_its_fingerprint_and_takes_the_new_token():
    keyed = Keyed(1, "k", "given", lambda result: (200, "{}"))
    renewed = keyed.renewed("fresh-token")
    assert (renewed.token, renewed.fingerprint, renewed.pair) == ("fresh-token", "given", (1, "k"))


def test_the_answer_kept_for_retries_is_the_answer_sent_rendered_once():
    renders = []

    def render(result) -> tuple[int, str]:
        renders.append(result)
        return 200, f'{{"rendering": {len(renders)}}}'  # a rendering that would differ if made again

    keyed = Keyed(1, "k", "given", render)
    result = object()
    kept = keyed.answer(result)  # the group commit keeps this one
    assert keyed.answer(result) == kept == (200, '{"rendering": 1}')  # and the request is sent it
    assert keyed.answer(another := object()) == (200, '{"rendering": 2}')  # another result: its own
    assert renders == [result, another]
