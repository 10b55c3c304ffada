from __future__ import annotations

import satellites_es


def test_all_is_sorted_and_every_name_exists() -> None:
    assert satellites_es.__all__ == sorted(satellites_es.__all__)
    for name in satellites_es.__all__:
        assert getattr(satellites_es, name) is not None


def test_every_error_has_one_root() -> None:
    errors = [getattr(satellites_es, n) for n in satellites_es.__all__ if n.endswith("Error")]
    for err in errors:
        assert issubclass(err, satellites_es.SatellitesError), err
