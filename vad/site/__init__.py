"""A site: every camera of one place watched by one process (``vad serve``): :class:`Site` (the service),
:mod:`vad.site.config` (the site file), :mod:`vad.site.core` (its typed events and the read interface),
:mod:`vad.site.mqtt` (lines on MQTT), :mod:`vad.site.http` (the control room: health, the cameras, the events,
Prometheus metrics)."""

from vad.site.config import SiteConfig, load_site
from vad.site.service import Site

__all__ = ["Site", "SiteConfig", "load_site"]
