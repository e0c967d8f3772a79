"""A site: every camera of one place watched by one process (``vad serve``, :class:`Site`), its file
(:mod:`vad.site.config`), its events (:mod:`vad.site.core`), MQTT (:mod:`vad.site.mqtt`), the control room
(:mod:`vad.site.http`)."""

from vad.site.config import SiteConfig, load_site
from vad.site.service import Site

__all__ = ["Site", "SiteConfig", "load_site"]
