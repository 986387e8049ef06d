"""Live freshness: getUpdatedSeries makes only the affected listings be asked again, with no remount."""

from __future__ import annotations

import datetime as dt

from nbiafs.api.records import Series
from nbiafs.fs.instance_cache import InstanceCache
from nbiafs.fs.tree import ArchiveTree
from nbiafs.settings import TreeSettings
from tests.fs.helpers import FakeClock
from tests.fs.test_tree import C1, STUDY1, FakeClient

NEW = "1.2.3.1.99"


def since_day(clock: FakeClock) -> dt.date:
    """The day the next check asks from, when the last check was at ``clock``'s time."""
    return dt.datetime.fromtimestamp(clock.now, dt.timezone.utc).date() - dt.timedelta(days=1)


def test_a_published_series_appears_and_only_its_listings_are_asked_again(cache: InstanceCache) -> None:
    client, clock = FakeClient(), FakeClock()
    tree = ArchiveTree(client, cache, None, TreeSettings(layout="uid", poll_interval=0), clock=clock)
    try:
        study = f"/{C1}/0042/{STUDY1}"
        before = tree.listdir(study)
        assert tree.listdir("/CHEST_ABD/p_1") and tree.listdir("/")
        clock.advance(60)
        published = Series(NEW, STUDY1, C1, "0042", modality="CT", image_count=1, raw={})
        client.series_data[(C1, "0042")].append(published)
        client.updated = [published]
        assert tree.listdir(study) == before  # nothing said yet: the listing is fresh for a day
        assert tree.background.join(timeout=10)  # background prefetches done: count only what follows
        calls = client.total()

        assert tree._freshness.check() == 1
        assert tree.listdir(study) == sorted([*before, NEW])
        assert tree.background.join(timeout=10)
        # getUpdatedSeries, then this patient's studies and series again; not the root, the collection
        # (they already name this patient) nor any other patient.
        assert client.total() - calls == 3
        assert sum(n for key, n in client.calls.items() if key[0] == "updated") == 1
        assert tree.listdir("/CHEST_ABD/p_1") and tree.listdir("/") and client.total() - calls == 3

        assert tree._freshness.check() == 0  # already seen: nothing marked again
        calls = client.total()
        assert NEW in tree.listdir(study) and client.total() == calls
        # The next check asks from a day before the previous one (release dates compare by day).
        days = sorted(key[1] for key in client.calls if key[0] == "updated")
        assert days[-1] == since_day(clock) and all(isinstance(d, dt.date) for d in days)
    finally:
        tree.close()


def test_polling_is_off_with_a_zero_interval(cache: InstanceCache) -> None:
    client = FakeClient()
    tree = ArchiveTree(client, cache, None, TreeSettings(poll_interval=0))
    try:
        assert tree._freshness._thread is None
    finally:
        tree.close()
