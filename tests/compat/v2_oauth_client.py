"""The v2 OAuth sequence of the community clients (nbiatoolkit's ``OAuth2`` and ``NBIAClient``), as plain
``requests`` calls, against a base URL: imported by ``tcia_driver.py`` (runs in the compat venv).

nbiatoolkit: base ``<host>/nbia-api/services/``; token = POST form ``username``, ``password``, ``client_id=NBIA``,
``grant_type=password`` to ``<base>oauth/token`` (it posts twice); then ``<base>v2/<endpoint>`` with headers
``Authorization: Bearer <token>`` and ``Content-Type: application/json``; refresh = POST ``refresh_token``,
``client_id=NBIA``, ``grant_type=refresh_token``; logout = GET ``<host>/nbia-api/logout`` with the same headers.
Where production answers one of its requests differently from what nbiatoolkit expects (facts §2), the step
checks that the server answers as production does and reports a SKIP naming the client's bug.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections import Counter
from collections.abc import Callable
from typing import Any

import requests

Record = Callable[[str, str, str], None]
GUEST = "nbia_guest"
TIMEOUT = 60


def run(host: str, expect: dict[str, Any], record: Record) -> None:
    """Run every step; ``record(status, name, message)`` gets one result per step."""
    base = host + "/nbia-api/services/"
    series = expect["series"]
    names = sorted(c["name"] for c in expect["collections"])

    def step(name: str, fn: Callable[[], str]) -> bool:
        try:
            note = fn()
        except StepSkippedError as skip:
            record("SKIP", name, str(skip))
            return True
        except Exception as exc:
            record("FAIL", name, f"{type(exc).__name__}: {exc}")
            return False
        record("PASS", name, note)
        return True

    state: dict[str, Any] = {}

    def headers() -> dict[str, str]:
        return {"Authorization": f"Bearer {state['access']}", "Content-Type": "application/json"}

    def token() -> str:
        form = {"username": GUEST, "password": "", "client_id": "NBIA", "grant_type": "password"}
        url = base + "oauth/token"
        first = requests.post(url, data=form, timeout=TIMEOUT)  # nbiatoolkit posts, then posts again
        answer = requests.post(url, data=form, timeout=TIMEOUT)
        for r in (first, answer):
            r.raise_for_status()
        data = answer.json()
        missing = {"access_token", "expires_in", "refresh_token"} - set(data)
        if missing:
            raise AssertionError(f"token answer lacks {sorted(missing)}: {data}")
        if not int(data["expires_in"]) > 0:
            raise AssertionError(f"expires_in {data['expires_in']!r}")
        state.update(access=data["access_token"], refresh=data["refresh_token"])
        return f"POST /nbia-api/services/oauth/token: {int(data['expires_in'])} s token"

    def collections() -> str:
        r = requests.get(base + "v2/getCollectionValues", headers=headers(), timeout=TIMEOUT)
        r.raise_for_status()
        got = [row.get("Collection") for row in r.json()]
        if sorted(got) != names:
            raise AssertionError(f"collections {got}, expected {names}")
        return f"{len(got)} collections"

    def get_series() -> str:
        coll = next((n for n in names if len(_of(series, n)) > 1), names[0])
        wanted = _of(series, coll)
        r = requests.get(
            base + "v2/getSeries", params={"Collection": coll}, headers=headers(), timeout=TIMEOUT
        )
        r.raise_for_status()
        rows = r.json()
        got = {row["SeriesInstanceUID"]: row for row in rows}
        if set(got) != {s["uid"] for s in wanted}:
            raise AssertionError(f"series of {coll}: {sorted(got)} != {sorted(s['uid'] for s in wanted)}")
        for s in wanted:
            row = got[s["uid"]]
            if row.get("ImageCount") != s["image_count"] or row.get("Collection") != coll:
                raise AssertionError(f"row {row} does not match {s['image_count']} images of {coll}")
            if "TimeStamp" not in row:
                raise AssertionError(f"v2 getSeries row without TimeStamp: {sorted(row)}")
        return f"{len(rows)} series of {coll}"

    def get_image() -> str:
        s = min((x for x in series if x["image_count"] > 1), key=lambda x: x["image_count"])
        r = requests.get(
            base + "v2/getImage", params={"SeriesInstanceUID": s["uid"]}, headers=headers(), timeout=TIMEOUT
        )
        r.raise_for_status()
        with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
            members = [m for m in zf.namelist() if m.endswith(".dcm")]
            got = Counter(
                (hashlib.md5(data).hexdigest(), len(data)) for data in (zf.read(m) for m in members)
            )
            if "LICENSE" not in zf.namelist():
                raise AssertionError(f"no LICENSE member: {zf.namelist()}")
        if got != Counter(zip(s["md5"], s["sizes"], strict=True)):
            raise AssertionError(
                f"{len(members)} members differ from the {s['image_count']} instances served"
            )
        return f"ZIP of {len(members)} instances, byte-identical"

    def refresh_nbiatoolkit() -> str:
        form = {"refresh_token": state["refresh"], "client_id": "NBIA", "grant_type": "refresh_token"}
        r = requests.post(base + "oauth/token", data=form, timeout=TIMEOUT)
        if r.status_code == 200 and "access_token" in r.json():
            state["access"] = r.json()["access_token"]
            return "refresh grant with client_id=NBIA"
        body = r.json() if r.headers.get("Content-Type", "").startswith("application/json") else {}
        if r.status_code == 401 and body.get("error") == "invalid_client":
            raise StepSkippedError(
                "nbiatoolkit bug: it refreshes with client_id=NBIA, but production forwards the refresh grant "
                "to Keycloak, whose client is 'nbia' (facts §2); the server answered 401 invalid_client as "
                "production does, and nbiatoolkit's raise_for_status() would raise here"
            )
        raise AssertionError(f"refresh answered {r.status_code} {r.text[:200]!r}")

    def refresh_keycloak_client() -> str:
        form = {"refresh_token": state["refresh"], "client_id": "nbia", "grant_type": "refresh_token"}
        r = requests.post(base + "oauth/token", data=form, timeout=TIMEOUT)
        r.raise_for_status()
        data = r.json()
        if not data.get("access_token") or data["access_token"] == state["access"]:
            raise AssertionError(f"no new access token: {data}")
        state.update(access=data["access_token"], refresh=data.get("refresh_token", state["refresh"]))
        collections()
        return "refresh grant (client_id=nbia) gave a working token"

    def logout_get() -> str:
        r = requests.get(host + "/nbia-api/logout", headers=headers(), timeout=TIMEOUT)
        if r.ok:
            return f"GET logout {r.status_code}"
        if r.status_code == 405:
            raise StepSkippedError(
                "nbiatoolkit bug: it logs out with GET /nbia-api/logout, but production (Keycloak era) takes "
                "POST only (facts §2); the server answered 405 as production does"
            )
        raise AssertionError(f"GET logout answered {r.status_code} {r.text[:200]!r}")

    def logout_post() -> str:
        r = requests.post(host + "/nbia-api/logout", headers=headers(), timeout=TIMEOUT)
        if r.status_code >= 500:
            raise AssertionError(f"POST logout answered {r.status_code} {r.text[:200]!r}")
        # Keycloak's logout gets no refresh token from NBIA, so the session (and this token) survives.
        collections()
        return f"POST logout relayed {r.status_code}; the token still works, as on production"

    steps: list[tuple[str, Callable[[], str]]] = [
        ("v2oauth.token", token),
        ("v2oauth.getCollectionValues", collections),
        ("v2oauth.getSeries", get_series),
        ("v2oauth.getImage", get_image),
        ("v2oauth.refresh[client_id=NBIA]", refresh_nbiatoolkit),
        ("v2oauth.refresh[client_id=nbia]", refresh_keycloak_client),
        ("v2oauth.logout[GET]", logout_get),
        ("v2oauth.logout[POST]", logout_post),
    ]
    for i, (name, fn) in enumerate(steps):
        if not step(name, fn) and i == 0:
            for later, _ in steps[1:]:
                record("FAIL", later, "no token")
            return


class StepSkippedError(Exception):
    """A step production itself would fail for the client: the reason names the client's bug."""


def _of(series: list[dict[str, Any]], collection: str) -> list[dict[str, Any]]:
    return [s for s in series if s["collection"] == collection]
