"""The hospital systems the appservice works with, checked on request: the HL7 listener, the
FHIR sources and the FHIR server (EMR), and the PACS (DICOMweb).

Asked for with ``GET /_carematrix/health?systems=1``: ``carematrix status`` and the
operations console's system page both show this answer, so there is one check of each system,
here, in the process that talks to them. The plain health endpoint leaves it out: the
supervisor polls that while the stack starts, and a slow PACS must not make the appservice
look unhealthy. Each probe is bounded (``PROBE_SECONDS``) and reads nothing about patients.
"""

from __future__ import annotations

import asyncio
import time
from asyncio import AbstractServer
from typing import Any

import aiohttp

from appservice.clinical.store import ClinicalStore
from appservice.config import AppserviceConfig
from bridges.dicomweb.client import DicomWebClient, DicomWebError
from carematrix.policy.model import Policy

PROBE_SECONDS = 3.0
# An accession no hospital uses: the PACS answers the search (it is up and searchable)
# with no study, so the probe reads no patient's data.
PROBE_ACCESSION = "CAREMATRIX-HEALTH-PROBE"


async def systems(
    config: AppserviceConfig, policy: Policy, store: ClinicalStore, hl7_server: AbstractServer | None,
    session: aiohttp.ClientSession,
) -> dict[str, Any]:
    """Each system: ``ok`` (True, False, or None when the deployment has none) and what to say."""
    fhir_server, pacs = await asyncio.gather(_fhir_server(config, session), _pacs(config, session))
    return {
        "hl7": _hl7(config, policy, hl7_server, await store.counts()),
        "fhir_sources": _fhir_sources(config, policy),
        "fhir_server": fhir_server,
        "pacs": pacs,
    }


def _hl7(config: AppserviceConfig, policy: Policy, server: AbstractServer | None,
         counts: dict[str, int]) -> dict[str, Any]:
    """The MLLP listener: listening or not, the senders it accepts, the inbox by state (HL7
    and FHIR input share it: delivered, pending, failed ...) and the dead letters."""
    if not config.hl7_port:
        return {"ok": None, "detail": "off (no MLLP port configured)"}
    where = f"{config.hl7_host}:{config.hl7_port}"
    senders = sorted(policy.clinical.senders) if policy.clinical else []
    serving = server is not None and server.is_serving()
    inbox = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return {"ok": serving, "address": where, "senders": senders, "inbox": counts,
            "detail": (f"listening on {where}" if serving else f"NOT listening on {where}")
            + f" (senders {', '.join(senders) or 'none'}; inbox: {inbox or 'empty'})"}


def _fhir_sources(config: AppserviceConfig, policy: Policy) -> dict[str, Any]:
    """The sources that push FHIR: configured in the policy, each with its token or not (a
    source without one is refused every push)."""
    sources = (policy.clinical.fhir_sources or {}) if policy.clinical else {}
    rows = [
        {"source": name, "types": sorted(types), "token": name in config.fhir_tokens}
        for name, types in sorted(sources.items())
    ]
    missing = [name for name in sorted(sources) if name not in config.fhir_tokens]
    if not rows:
        return {"ok": None, "sources": [], "detail": "none configured"}
    named = ", ".join(f"{name} ({', '.join(sorted(types))})" for name, types in sorted(sources.items()))
    detail = f"{len(rows)} configured: {named}" + (f"; NO TOKEN for {', '.join(missing)} (refused)" if missing else "")
    return {"ok": not missing, "sources": rows, "detail": detail}


async def _fhir_server(config: AppserviceConfig, session: aiohttp.ClientSession) -> dict[str, Any]:
    """The hospital's FHIR server (EMR) the appservice reads from: its CapabilityStatement."""
    if not config.fhir_server:
        return {"ok": None, "detail": "none configured"}
    url = f"{config.fhir_server.rstrip('/')}/metadata"
    headers = {"Accept": "application/fhir+json"}
    if config.systems_token:
        headers["Authorization"] = f"Bearer {config.systems_token}"
    started = time.monotonic()
    try:
        async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=PROBE_SECONDS)) as resp:
            body = await resp.json(content_type=None) if resp.status == 200 else {}
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"ok": False, "url": config.fhir_server, "detail": f"{config.fhir_server}: {type(exc).__name__} {exc}"}
    ms = round((time.monotonic() - started) * 1000)
    if status != 200:
        return {"ok": False, "url": config.fhir_server, "detail": f"{config.fhir_server}: HTTP {status}"}
    version = body.get("fhirVersion", "?") if isinstance(body, dict) else "?"
    return {"ok": True, "url": config.fhir_server, "detail": f"{config.fhir_server} (FHIR {version}, {ms} ms)"}


async def _pacs(config: AppserviceConfig, session: aiohttp.ClientSession) -> dict[str, Any]:
    if not config.dicomweb:
        return {"ok": None, "detail": "none configured"}
    started = time.monotonic()
    try:
        async with DicomWebClient(config.dicomweb, session=session, timeout=PROBE_SECONDS) as pacs:
            await pacs.find_studies(accession=PROBE_ACCESSION, limit=1)
    except (DicomWebError, aiohttp.ClientError, TimeoutError) as exc:
        return {"ok": False, "url": config.dicomweb, "detail": f"{config.dicomweb}: {exc}"}
    ms = round((time.monotonic() - started) * 1000)
    return {"ok": True, "url": config.dicomweb, "detail": f"{config.dicomweb} (DICOMweb search answered, {ms} ms)"}
