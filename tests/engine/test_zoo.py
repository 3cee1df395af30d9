"""The public model zoo's deploy nets (tests/zoo/, as published) against real Caffe's recordings."""

from pathlib import Path

import pytest

from caffecam.engine.netparam import current_layers
from caffecam.engine.prototxt import read_net
from caffecam.errors import CaffeCamError

ZOO = Path(__file__).resolve().parents[1] / "zoo"
NETS = sorted(p.stem for p in ZOO.glob("*.prototxt") if p.stem != "densenet121")


def test_zoo_holds_the_listed_nets():
    assert len(NETS) == 18
    listed = (ZOO / "README.md").read_text()
    for name in NETS + ["densenet121"]:
        assert f"| {name}.prototxt |" in listed, f"{name} has no source line in tests/zoo/README.md"


@pytest.mark.parametrize("name", NETS)
def test_parses(name):
    assert len(current_layers(read_net(ZOO / f"{name}.prototxt"))) > 0  # V1 `layers` upgraded


def test_densenet_ceil_mode_is_one_clear_line():
    path = ZOO / "densenet121.prototxt"
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "ceil_mode" in text)
    with pytest.raises(CaffeCamError) as err:
        read_net(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:{line}:")
    assert "ceil_mode" in msg and "delete it" in msg
