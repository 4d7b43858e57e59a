"""Schemathesis against our own /openapi.json: generated requests, valid ones and invalid ones,
for every operation in the document; none may get a 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

EXAMPLES_PER_OPERATION = 25


def test_no_operation_answers_5xx(app, api):
    deal = api.create_deal(quantity=1000)
    api.reserved(deal["id"], 1)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def fuzz(case):
                response = case.call(headers=api.headers())
                case.validate_response(response, checks=[not_a_server_error])

            try:
                fuzz()
            except Unsatisfiable:
                # An operation with nothing to get wrong (no body, no parameters that can be
                # invalid) has no negative cases; its positive ones ran above.
                assert mode is GenerationMode.NEGATIVE, operation.label
