"""The schemathesis settings every generated-request test of the suite shares."""

from __future__ import annotations

import schemathesis

__all__ = ["schema_config"]


def schema_config(seed: int, examples: int) -> schemathesis.Config:
    """Valid and invalid requests (`examples` per operation, fixed `seed`, no example
    database), every answer checked against the document: its status, content type and
    schema; no 5xx but 503, which the ETSI APIs answer when they cannot serve now."""
    return schemathesis.Config.from_dict(
        {
            "seed": seed,
            "generation": {"mode": "all", "max-examples": examples, "database": "none"},
            "checks": {
                "enabled": False,
                "not_a_server_error": {
                    "enabled": True,
                    "expected-statuses": ["1XX", "2XX", "3XX", "4XX", "503"],
                },
                "status_code_conformance": {"enabled": True},
                "content_type_conformance": {"enabled": True},
                "response_schema_conformance": {"enabled": True},
            },
        }
    )
