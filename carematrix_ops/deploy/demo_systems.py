"""The demo hospital's own EMR and PACS, connected in place of real systems."""

from __future__ import annotations

from carematrix_ops.deploy.errors import DeployError
from carematrix_ops.deploy.settings import Settings


def connect_demo_systems(settings: Settings) -> None:
    """Point the appservice at the demo EMR and PACS; their URLs must be in the settings
    before the appservice config is rendered. Repeating it is harmless."""
    if not settings.demo_systems:
        return
    if not settings.demo or not settings.carematrix_enabled:
        raise DeployError("the demo EMR and PACS come only with the demo hospital (not with --no-demo "
                          "or a plain Synapse); pass --no-demo-systems")
    from carematrix_ops.demo.pacs import DICOMWEB_ROOT

    wanted = {
        "fhir_server": settings.demo_emr_url,
        "emr_archive": settings.demo_emr_url,
        "dicomweb": settings.demo_pacs_url + DICOMWEB_ROOT if settings.has_demo_pacs else None,
    }
    for key, url in wanted.items():
        if getattr(settings, key) not in (None, url):
            raise DeployError(
                f"--{key.replace('_', '-')} connects a real system; with it, pass --no-demo-systems "
                "(the demo EMR and PACS are never mixed with a hospital's systems)"
            )
        setattr(settings, key, url)
