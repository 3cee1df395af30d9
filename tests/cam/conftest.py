import pytest

from tests.cam.report_helpers import make_run


@pytest.fixture(scope="session")
def report_run(tmp_path_factory):
    """scripts/cam.py over the report helpers' labelled list, with boxes and saved maps (see report_helpers)."""
    run = make_run(tmp_path_factory.mktemp("report"))
    assert run["proc"].returncode == 0, run["proc"].stderr
    return run
