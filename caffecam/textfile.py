"""Small line-oriented text files (class labels, boxes, lists): read with one-line errors."""

from pathlib import Path

from caffecam.errors import CaffeCamError


def content_lines(path):
    """[(line number, stripped line)] of `path`, skipping blank lines and `#` comments."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise CaffeCamError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaffeCamError(f"{path}: cannot read ({exc})") from None
    return [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip() and not line.strip().startswith("#")]
