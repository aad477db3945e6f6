"""schemathesis against /openapi.json: generated requests never get a 5xx, invalid ones get a 4xx, and every answer
matches the documented status codes, content types, headers and schemas. Bounded: a few examples per operation."""
from __future__ import annotations

import pytest

from http_fixtures import make_core, serving
from optional import optional_import, requires

schemathesis = optional_import("schemathesis")
if schemathesis is not None:
    from hypothesis import HealthCheck, settings
    from schemathesis.checks import (
        content_type_conformance, negative_data_rejection, not_a_server_error, response_headers_conformance,
        response_schema_conformance, status_code_conformance)

    # Not positive_data_acceptance: a schema-valid voice name that does not exist is rightly a 400.
    CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              response_headers_conformance, negative_data_rejection]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    # short texts keep each generated synthesis fast; the schema's maxLength follows http.max_input_chars
    core = make_core(tmp_path_factory.mktemp("voices"), http__max_input_chars=16)
    try:
        with serving(core) as server:
            yield server
    finally:
        core.unload()


@pytest.fixture(scope="module")
def api_schema(live_server):
    # The coverage phase's boundary cases run in negative mode only (cheap 4xx answers); positive requests, each a
    # real synthesis, come from the bounded fuzzing phase.
    config = schemathesis.Config.from_dict({"phases": {"coverage": {"generation": {"mode": "negative"}}}})
    return schemathesis.openapi.from_url(f"{live_server.url}/openapi.json", config=config)


if schemathesis is not None:
    schema = schemathesis.pytest.from_fixture("api_schema")

    @schema.parametrize()
    @settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @pytest.mark.timeout(120)
    def test_api_conforms(case, live_server):
        case.call_and_validate(base_url=live_server.url, checks=CHECKS, timeout=30)
else:
    @requires("schemathesis", hint="make setup-test")
    def test_api_conforms():
        pass  # skipped: schemathesis is not installed
