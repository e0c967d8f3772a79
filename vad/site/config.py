"""A site's cameras in one YAML file (``vad serve --config site.yaml``; the README has an example), checked before
anything opens. Relative paths (``run``, ``out``, a file ``source``) are read from the folder of the site file. Each
mistake is one :class:`~vad.errors.ConfigError` naming the file and the key: a wrong type or an unknown key, a
camera's run that does not exist or holds no model, a camera named twice, a source string that can be no source.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import yaml

from vad.config import Backend, Positive, Range, from_dict, read_config_text
from vad.errors import ConfigError, UsageError
from vad.live.options import OPTION_NAMES, CameraOptions, Seconds, Timeout
from vad.live.sources import check_source
from vad.runs import RunFolder


@dataclass(frozen=True)
class CameraConfig(CameraOptions):
    """One camera: where its frames come from, which run's model scores it, how long its evidence is kept, and how
    it is watched (:class:`vad.live.options.CameraOptions`: the fields of ``vad watch``'s flags, with their
    defaults and checks)."""

    source: str = ""  # stream URL (rtsp://, http(s)://, udp://, srt://), webcam (/dev/videoN, webcam:N), file, folder
    run: str = ""  # the run folder whose model scores it (cameras naming one run share one loaded model)
    scene: str | None = None  # the scene's model, for a run trained per scene
    retain_days: Annotated[float, Range(gt=0)] = 7.0  # events (lines, snapshots, clips, footage) older are deleted


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: Annotated[int, Range(ge=1, le=65535)] = 1883
    topic_prefix: str = "vad"
    client_id: str | None = None  # default: vad-<hostname>-<pid>
    username: str | None = None
    password: str | None = None
    keepalive: Annotated[int, Range(ge=5)] = 30
    buffer: Positive = 10000  # messages kept while the broker is away; the oldest dropped (and counted) beyond


@dataclass(frozen=True)
class TlsConfig:
    cert: str = ""  # PEM certificate (chain) file
    key: str = ""  # PEM private key file


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"  # beyond loopback (0.0.0.0, an address) only with users or tokens (vad.site.auth)
    port: Annotated[int, Range(ge=0, le=65535)] = 8971  # 0: any free port
    tls: TlsConfig | None = None  # serve HTTPS directly
    auth_file: str | None = None  # users and tokens; default: <site file>.auth.json beside the site file
    session_hours: Annotated[float, Range(gt=0)] = 12.0  # a login lasts this long (or until vad serve restarts)
    origins: tuple[str, ...] = ()  # more Origins allowed to POST (a reverse proxy's public https://host)
    trusted_proxies: tuple[str, ...] = ()  # addresses (or networks) whose X-Forwarded-For/-Proto is believed: your
    # reverse proxy's, e.g. [127.0.0.1]; default none: the login limit counts the address that connects


@dataclass(frozen=True)
class SiteConfig:
    cameras: dict[str, CameraConfig] = field(default_factory=dict)
    out: Path = Path("site")
    mqtt: MqttConfig | None = None
    http: HttpConfig | None = None
    batch: Positive = 8
    batch_timeout_ms: Seconds = 20.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Backend = "auto"
    status_every: Timeout = 10.0  # seconds between status lines
    max_gb: Annotated[float, Range(gt=0)] = 20.0  # evidence on disk, all cameras (vad.site.retention)
    path: Path | None = None  # the file it was read from


SITE_KEYS = ("cameras", "defaults", "out", "mqtt", "http", "batch", "batch_timeout_ms", "device", "backend",
             "status_every", "max_gb")
CAMERA_KEYS = ("source", "run", "scene", *OPTION_NAMES, "retain_days")  # every field, in the order errors list them


class _UniqueKeys(yaml.SafeLoader):
    """YAML whose mappings refuse a key given twice (PyYAML keeps the last one silently), compared as text: ``1``
    and ``"1"``, ``true`` and ``"True"`` name one camera."""


def _mapping(loader: _UniqueKeys, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = str(loader.construct_object(key_node, deep=deep))  # names are compared as the text they become
        if key in seen:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: {key!r} is given twice (also on line "
                              f"{seen[key] + 1}); names must be unique")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_site(path: Path | str) -> SiteConfig:
    """The site file ``path``, checked; a :class:`ConfigError` names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such site file; expected a YAML file with a 'cameras:' section (vad serve "
                          "--help shows one)")
    text = read_config_text(path, "site file")
    try:
        data = yaml.load(text, Loader=_UniqueKeys)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deep); expected a site file") from None
    return parse_site(data, path)


def parse_site(data: object, path: Path) -> SiteConfig:
    """A site from the mapping ``data`` read from ``path`` (relative paths are read from its folder)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'cameras:' section, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SITE_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; expected one of {', '.join(SITE_KEYS)}")
    cameras = data.get("cameras")
    if not isinstance(cameras, dict) or not cameras:
        raise ConfigError(f"{path}: cameras: expected a mapping of camera names to {{source: ..., run: ...}}, got "
                          f"{cameras!r}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: defaults: expected a mapping of camera keys, got {defaults!r}")
    bad = sorted(set(defaults) - set(CAMERA_KEYS))
    if bad:
        raise ConfigError(f"{path}: defaults.{bad[0]}: not a camera key; expected one of {', '.join(CAMERA_KEYS)}")
    base = path.resolve().parent
    rest = {k: v for k, v in data.items() if k not in ("cameras", "defaults", "mqtt", "http")}
    try:
        site = from_dict(SiteConfig, {k: v for k, v in rest.items() if k != "out"})
        mqtt = None if data.get("mqtt") is None else from_dict(MqttConfig, data["mqtt"], "mqtt")
        http = None if data.get("http") is None else from_dict(HttpConfig, data["http"], "http")
        if "out" in data and not isinstance(data["out"], str):
            raise ConfigError(f"out: expected a folder path, got {data['out']!r}")
        parsed = {}
        for name, camera in cameras.items():
            parsed[str(name)] = parse_camera(str(name), camera, defaults, base)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    out = Path(data.get("out") or "site")
    if http is not None:
        http = _http_paths(http, path, base)
    return dataclasses.replace(site, cameras=parsed, mqtt=mqtt, http=http, path=path,
                               out=out if out.is_absolute() else base / out)


def _http_paths(http: HttpConfig, path: Path, base: Path) -> HttpConfig:
    """``http`` with its files absolute (read from the site file's folder) and checked; the users file defaults to
    ``<site file>.auth.json``."""
    def absolute(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else base / q)

    auth = absolute(http.auth_file) if http.auth_file else str(base / f"{path.stem}.auth.json")
    tls = http.tls
    if tls is not None:
        tls = dataclasses.replace(tls, cert=absolute(tls.cert), key=absolute(tls.key))
        for key in ("cert", "key"):
            if not Path(getattr(tls, key)).is_file():
                raise ConfigError(f"{path}: http.tls.{key}: {getattr(tls, key)} not found; expected a PEM file")
    for origin in http.origins:
        if not origin.startswith(("http://", "https://")) or origin.rstrip("/") != origin:
            raise ConfigError(f"{path}: http.origins: {origin!r}; expected scheme://host[:port] with no path, e.g. "
                              "https://vad.example.org")
    proxies = []
    for proxy in http.trusted_proxies:
        try:  # as uvicorn reads them: 10.0.0.1/8 -> 10.0.0.0/8, a bare address -> itself
            net = ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(f"{path}: http.trusted_proxies: {proxy!r}; expected an IP address or network (e.g. "
                              "127.0.0.1, 10.0.0.0/8)") from None
        proxies.append(str(net.network_address) if net.num_addresses == 1 else str(net))
    return dataclasses.replace(http, auth_file=auth, tls=tls, trusted_proxies=tuple(proxies))


def parse_camera(name: str, data: object, defaults: dict, base: Path) -> CameraConfig:
    """Camera ``name``'s settings (``defaults`` under them), its run and source checked."""
    where = f"cameras.{name}"
    if not name or "/" in name or name.startswith(".") or any(c in name for c in "#+\0") or name != name.strip():
        raise ConfigError(f"{where}: a camera name is a folder and an MQTT topic level: no '/', '#', '+', leading "
                          "dot or outer spaces")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping such as {{source: rtsp://..., run: runs/campus}}, got "
                          f"{data!r}")
    cam = from_dict(CameraConfig, {**defaults, **data}, where)
    for key in ("source", "run"):
        if not getattr(cam, key):
            raise ConfigError(f"{where}.{key}: missing; every camera needs a source and the run whose model scores it")
    run = Path(cam.run).expanduser()
    run = run if run.is_absolute() else base / run
    source = cam.source
    if "://" not in source and not source.startswith(("webcam:", "/dev/video")):
        local = Path(source).expanduser()
        source = str(local if local.is_absolute() else base / local)
    cam = dataclasses.replace(cam, run=str(run), source=source)
    check_camera(where, cam)
    return cam


def check_camera(where: str, cam: CameraConfig) -> None:
    """A camera's run holds a model (the scene's, when it says one) and its source can be a source."""
    folder = RunFolder(Path(cam.run))
    if not folder.root.is_dir():
        raise ConfigError(f"{where}.run: {cam.run} does not exist; expected a run folder written by vad train")
    models = folder.model_files()
    if not models:
        raise ConfigError(f"{where}.run: {cam.run} holds no model.pt; train it first (vad train ... --out {cam.run})")
    if cam.scene is None and len(models) > 1:
        raise ConfigError(f"{where}.scene: {cam.run} holds one model per scene ({', '.join(models)}); say which")
    if cam.scene is not None and cam.scene not in models:
        raise ConfigError(f"{where}.scene: {cam.run} has no model for scene {cam.scene!r}; it has "
                          f"{', '.join(models)}")
    try:
        check_source(cam.source)
    except UsageError as err:
        raise ConfigError(f"{where}.source: {str(err).removeprefix(f'--source {cam.source}: ')}") from None
