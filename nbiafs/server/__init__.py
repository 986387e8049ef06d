"""The bundled NBIA-compatible archive server (``nbiafs serve``); imports nothing from the rest of nbiafs.

``ArchiveServer(ServerConfig(...)).start()`` serves the deterministic synthetic archive (or a folder of real
DICOM) answering as the production NBIA servers do (per their source and recorded answers), Keycloak era
by default, with optional faults. Find a behaviour by file name:

- ``config.py`` knobs; ``errors.py`` exceptions; ``app.py`` start/stop.
- ``archive.py`` the model; ``synthetic.py`` the synthetic data; ``datadir.py`` indexing real DICOM.
- ``routes.py`` paths; ``endpoints.py`` which endpoint takes which parameters; ``handler.py`` HTTP and the
  order of checks; ``transport.py`` throttling, trickling, cut connections, chunking; ``faults.py`` the
  hostile fault modes (trickle, drop, blackhole, truncate, corrupt, wrong SOP, HTML, huge JSON).
- ``auth.py`` the token store; ``oauth.py`` token endpoint and logout; ``guard.py`` who is calling and what
  a refused caller gets, per era and prefix.
- ``view.py`` visibility and filters; ``queries.py`` metadata answers; ``rows.py`` their columns;
  ``dates.py`` date parameters; ``ordering.py`` database, HashMap and value-list orders; ``formats.py``
  json/xml/html/csv; ``replies.py`` stock answers.
- ``downloads.py`` images, ZIPs, MD5s; ``advanced.py``, ``search.py``, ``dicomtags.py`` the advanced API;
  ``v3meta.py`` the retired v3 API's metadata documents.
"""

from nbiafs.server.app import ArchiveServer
from nbiafs.server.archive import Archive, CollectionInfo, InstanceInfo, PatientInfo, SeriesInfo, StudyInfo
from nbiafs.server.config import AUTH_ERAS, GUEST_USER, RESTRICTED_COLLECTION, RequestRecord, ServerConfig
from nbiafs.server.errors import ServerConfigError, ServerError

__all__ = [
    "AUTH_ERAS",
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
    "ServerConfigError",
    "ServerError",
    "StudyInfo",
]
