"""Records to pandas DataFrames, for notebooks (pandas is optional: ``pip install 'nbiafs[pandas]'``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from nbiafs.api.records import Record
from nbiafs.errors import ConfigError

if TYPE_CHECKING:
    import pandas


def to_dataframe(records: Iterable[Record], *, raw: bool = False) -> pandas.DataFrame:
    """A DataFrame with one row per record: the typed fields as columns (dates as datetime64), or with ``raw``
    the rows exactly as the server sent them (the union of their keys as columns).

    Raises ConfigError when pandas is not installed.
    """
    try:
        import pandas
    except ImportError:
        raise ConfigError("to_dataframe needs pandas: pip install 'nbiafs[pandas]'") from None
    rows: list[dict[str, Any]] = [record.to_dict(raw=raw) for record in records]
    frame: pandas.DataFrame = pandas.DataFrame(rows)
    return frame
