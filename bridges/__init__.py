"""Protocol adapters for hospital systems (scheduling feeds, HL7 v2, FHIR R4, DICOMweb).

Adapters turn wire formats into plain typed records and know nothing about Matrix; the
appservice routes those records into rooms.
"""
