"""The bundled NBIA-compatible archive server (``nbiafs serve``); imports nothing from nbiafs but ``errors``.

``ArchiveServer(ServerConfig(...)).start()`` serves the deterministic synthetic archive (or a folder of real
DICOM) with the live servers' quirks and optional faults. Find a behaviour by file name: ``config.py`` knobs,
``synthetic.py`` the synthetic data, ``datadir.py`` indexing real DICOM, ``archive.py`` the model,
``queries.py`` metadata answers, ``endpoints.py`` which endpoint takes which parameters, ``formats.py``
json/csv/xml/html, ``auth.py`` tokens and api keys, ``handler.py`` HTTP routing, status codes and ZIPs,
``transport.py`` throttling and cut connections, ``app.py`` start/stop.
"""

from nbiafs.server.app import ArchiveServer
from nbiafs.server.archive import Archive, CollectionInfo, InstanceInfo, PatientInfo, SeriesInfo, StudyInfo
from nbiafs.server.config import GUEST_USER, RESTRICTED_COLLECTION, RequestRecord, ServerConfig

__all__ = [
    "GUEST_USER",
    "RESTRICTED_COLLECTION",
    "Archive",
    "ArchiveServer",
    "CollectionInfo",
    "InstanceInfo",
    "PatientInfo",
    "RequestRecord",
    "SeriesInfo",
    "ServerConfig",
    "StudyInfo",
]
