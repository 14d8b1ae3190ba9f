"""The FHIR wrappers of our answers: searchset Bundles and OperationOutcomes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from fhir_r4.search_params import SearchRequest, encode_cursor, resource_name

FHIR_JSON = "application/fhir+json"


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    """An OperationOutcome with one issue; ``code`` is FHIR's IssueType (``invalid``,
    ``not-found``, ``deleted``, ``not-supported``, ``security``, ``forbidden``...)."""
    issue = {"severity": severity, "code": code, "diagnostics": diagnostics}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def _link(base: str, search: SearchRequest, after: str | None) -> str:
    """The URL of a page of ``search``: its selecting parameters, its count, and the cursor."""
    query = [*search.query, ("_count", str(search.count))]
    if search.total.value != "estimate":
        query.append(("_total", search.total.value))
    if after is not None:
        query.append(("_cursor", encode_cursor(after)))
    return f"{base}/{resource_name(search.resource)}?{urlencode(query)}"


def searchset(
    base: str,
    search: SearchRequest,
    resources: Sequence[dict[str, Any]],
    *,
    next_after: str | None,
    total: int | None,
) -> dict[str, Any]:
    """A searchset Bundle of ``resources``: ``self`` and, while more may follow, ``next``
    (keyset: the page after ``next_after``), and ``total`` when it is known."""
    links = [{"relation": "self", "url": _link(base, search, search.after)}]
    if next_after is not None:
        links.append({"relation": "next", "url": _link(base, search, next_after)})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    if not resources:
        return bundle  # FHIR's JSON has no empty arrays: no matches, no entry
    bundle["entry"] = [
        {
            "fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
            "resource": resource,
            "search": {"mode": "match"},
        }
        for resource in resources
    ]
    return bundle
