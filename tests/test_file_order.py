"""The order of the test files in `make test`'s processes (tests/file_order.py): the longest first, a file's tests
together and in their order, a file with no measurement at the median, and a plain run left as collected."""

from __future__ import annotations

from types import SimpleNamespace

from tests.file_order import file_seconds, longest_first, pytest_collection_modifyitems


def items(*nodeids: str) -> list:
    return [SimpleNamespace(nodeid=n) for n in nodeids]


COLLECTED = items("tests/test_a.py::one", "tests/test_a.py::two", "tests/test_b.py::one", "tests/test_new.py::one",
                  "tests/test_c.py::one", "tests/test_c.py::two")
SECONDS = {"tests/test_a.py": 1.0, "tests/test_b.py": 50.0, "tests/test_c.py": 9.0, "tests/test_d.py": 5.0}


def test_the_longest_file_comes_first_and_a_files_tests_keep_their_order():
    ordered = [i.nodeid for i in longest_first(COLLECTED, SECONDS)]
    # b 50 s, c 9 s, new (unmeasured: the median, 7 s), a 1 s
    assert ordered == ["tests/test_b.py::one", "tests/test_c.py::one", "tests/test_c.py::two",
                       "tests/test_new.py::one", "tests/test_a.py::one", "tests/test_a.py::two"]
    assert [i.nodeid for i in longest_first(COLLECTED, {})] == [i.nodeid for i in COLLECTED]  # no measurements


def test_only_an_xdist_worker_reorders():
    plain = list(COLLECTED)
    pytest_collection_modifyitems(SimpleNamespace(), plain)
    assert plain == COLLECTED
    worker = list(COLLECTED)
    pytest_collection_modifyitems(SimpleNamespace(workerinput={}), worker)
    assert sorted(i.nodeid for i in worker) == sorted(i.nodeid for i in COLLECTED)


def test_the_measurements_are_seconds_of_test_files():
    seconds = file_seconds()  # a file no longer there is only ignored: the next measurement drops it
    assert seconds and all(path.startswith("tests/test_") and path.endswith(".py") and s >= 0
                           for path, s in seconds.items())
