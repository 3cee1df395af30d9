"""Reading and writing Caffe's text and binary protobuf files, with one-line errors."""

import re
from pathlib import Path

from google.protobuf import message as pb_message
from google.protobuf import text_format

from caffecam.atomic import atomic_write_bytes
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2


def parse_text(text, msg_type, filename="<string>"):
    """Parse prototxt `text` into a new `msg_type` message; errors name `filename:line:column`."""
    msg = msg_type()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as exc:
        line, col = getattr(exc, "_line", None), getattr(exc, "_column", None)
        detail = str(exc)
        m = re.match(r"^(\d+):(\d+)\s*:\s*(.*)$", detail, re.S)
        if m:
            line, col, detail = int(m.group(1)), int(m.group(2)), m.group(3)
        where = f"{filename}:{line}:{col}" if line is not None else filename
        raise CaffeCamError(f"{where}: {detail.strip()}{_fork_field_hint(detail)}") from None
    return msg


# Fields of Caffe forks that BVLC Caffe refuses too, with what to write instead.
_FORK_FIELDS = {
    "ceil_mode": "a field of a Caffe fork, which BVLC Caffe refuses too: delete it (BVLC's pooling rounds up, "
                 "as ceil_mode: true did) or write round_mode: FLOOR for ceil_mode: false",
}


def _fork_field_hint(detail):
    m = re.search(r'has no field named "(\w+)"', detail)
    return f"; {_FORK_FIELDS[m.group(1)]}" if m and m.group(1) in _FORK_FIELDS else ""


def read_text(path, msg_type):
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")  # protobuf text format is UTF-8, whatever the locale
    except FileNotFoundError:
        raise CaffeCamError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaffeCamError(f"{path}: cannot read as text ({exc})") from None
    return parse_text(text, msg_type, str(path))


def read_net(path):
    return read_text(path, caffe_pb2.NetParameter)


def read_solver(path):
    return read_text(path, caffe_pb2.SolverParameter)


def to_text(msg):
    return text_format.MessageToString(msg)


def read_binary(path, msg_type, what):
    """Parse a binary protobuf file; a missing, truncated or foreign file is a one-line error."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CaffeCamError(f"{path}: file not found") from None
    except OSError as exc:
        raise CaffeCamError(f"{path}: cannot read ({exc.strerror})") from None
    msg = msg_type()
    try:
        msg.ParseFromString(data)
    except pb_message.DecodeError:
        raise CaffeCamError(f"{path}: not a valid {what} (truncated or not a protobuf file)") from None
    return msg


def write_binary(path, msg):
    atomic_write_bytes(path, msg.SerializeToString())


def write_text(path, msg):
    atomic_write_bytes(path, to_text(msg).encode())
