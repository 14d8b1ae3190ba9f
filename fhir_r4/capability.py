"""``GET /fhir/metadata``: the CapabilityStatement, built from the parameters the search
parser knows, so it lists exactly what is supported and nothing more."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from fhir_r4.search_params import DEFAULT_COUNT, MAX_COUNT, PARAMETERS, resource_name
from mirror import Resource

# When this statement last changed: a CapabilityStatement must carry its date.
_REVISED = "2026-12-01"

# Each parameter's FHIR type and, for the standard ones, their definition.
_SEARCH_PARAMETERS: dict[str, tuple[str, str | None, str]] = {
    "_id": ("token", "Resource-id", "the record's HealthDock id"),
    "_lastUpdated": (
        "date",
        "Resource-lastUpdated",
        "HealthDock's updated_at; a day without a time is its span in HEALTHDOCK_TIMEZONE",
    ),
    "identifier": (
        "token",
        None,
        "system|value: the HealthDock id (system https://api.healthdock.org/v1/patients or "
        ".../appointments) or, for patients, the ABHA number (https://healthid.ndhm.gov.in, "
        "with or without hyphens)",
    ),
    "family": ("string", "individual-family", "starts with, ignoring case; :exact supported"),
    "given": ("string", "individual-given", "starts with, ignoring case; :exact supported"),
    "name": ("string", "Patient-name", "family or given name starts with; :exact supported"),
    "birthdate": ("date", "individual-birthdate", "YYYY, YYYY-MM or YYYY-MM-DD with a prefix"),
    "gender": ("token", "individual-gender", "male, female, other (unknown matches nothing)"),
    "date": (
        "date",
        "clinical-date",
        "the start: a day (YYYY-MM-DD) is the local day in HEALTHDOCK_TIMEZONE; with a time, "
        "the instant",
    ),
    "patient": ("reference", "Appointment-patient", "Patient/<id> or <id>"),
    "practitioner": ("reference", "Appointment-practitioner", "Practitioner/<id> or <id>"),
    "status": (
        "token",
        "Appointment-status",
        "booked (HealthDock scheduled or confirmed), fulfilled (completed), cancelled",
    ),
}
_PAGING = (
    f"Results are in id order. _count: page size (default {DEFAULT_COUNT}, at most {MAX_COUNT}); "
    "follow the Bundle's next link to page on (keyset paging: a record that matches throughout "
    "is returned exactly once, whatever changes between pages). _total=accurate counts every "
    "match; otherwise total is given when the first page holds all of them. Tombstoned "
    "records are not returned by searches; a read answers 410 Gone."
)


def _version() -> str:
    try:
        return metadata.version("healthdock-mirror")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _resource(resource: Resource) -> dict[str, Any]:
    params = []
    for name in PARAMETERS[resource]:
        kind, definition, documentation = _SEARCH_PARAMETERS[name]
        param: dict[str, Any] = {"name": name, "type": kind, "documentation": documentation}
        if definition is not None:
            param["definition"] = f"http://hl7.org/fhir/SearchParameter/{definition}"
        params.append(param)
    return {
        "type": resource_name(resource),
        "documentation": _PAGING,
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "versioning": "no-version",
        "readHistory": False,
        "updateCreate": False,
        "searchParam": params,
    }


def capability_statement(base: str) -> dict[str, Any]:
    """What this server does, for a client to discover before it asks."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": _REVISED,
        "publisher": "healthdock-mirror",
        "kind": "instance",
        "software": {"name": "healthdock-mirror", "version": _version()},
        "implementation": {
            "description": "A read-only FHIR R4 view of a hospital's HealthDock mirror",
            "url": base,
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "description": (
                        "Authorization: Bearer <token> of a named token with the feed or "
                        "viewer role (healthdock-mirror token create), or HEALTHDOCK_ADMIN_TOKEN."
                        " Every read and search is written to the audit trail."
                    ),
                },
                "resource": [_resource(resource) for resource in Resource],
            }
        ],
    }
