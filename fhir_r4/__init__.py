"""FHIR R4 over the mirror (SPEC.md, Interoperability): resources mapped from mirrored rows,
search parameters parsed into the mirror's searches, searchset Bundles, the
CapabilityStatement, and the bulk export. The receiver serves it at ``/fhir``; the command line
exports it."""

from fhir_r4.bundle import FHIR_JSON, operation_outcome, searchset
from fhir_r4.capability import capability_statement
from fhir_r4.export import Export, ExportedFile, export_fhir
from fhir_r4.mapping import (
    ABHA_SYSTEM,
    APPOINTMENT_ID_SYSTEM,
    PATIENT_ID_SYSTEM,
    appointment_resource,
    is_fhir_id,
    patient_resource,
)
from fhir_r4.search_params import (
    MAX_COUNT,
    FormatNotAcceptable,
    SearchContext,
    SearchError,
    SearchRequest,
    TotalMode,
    check_format,
    check_read_parameters,
    parse_search,
    resource_name,
)

__all__ = [
    "ABHA_SYSTEM",
    "APPOINTMENT_ID_SYSTEM",
    "FHIR_JSON",
    "MAX_COUNT",
    "PATIENT_ID_SYSTEM",
    "Export",
    "ExportedFile",
    "FormatNotAcceptable",
    "SearchContext",
    "SearchError",
    "SearchRequest",
    "TotalMode",
    "appointment_resource",
    "capability_statement",
    "check_format",
    "check_read_parameters",
    "export_fhir",
    "is_fhir_id",
    "operation_outcome",
    "parse_search",
    "patient_resource",
    "resource_name",
    "searchset",
]
