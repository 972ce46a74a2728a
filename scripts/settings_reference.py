#!/usr/bin/env python3
"""`.env.example` and the README's table of settings, from the settings' declarations
(app/config.py) (`make docs`).

    python scripts/settings_reference.py           # write both
    python scripts/settings_reference.py --check   # exit 1 when either is out of date

tests/test_config.py keeps both current.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.config import example_env, markdown_table  # noqa: E402

START = "<!-- settings: generated from app/config.py by `make docs` -->\n"
END = "<!-- end of settings -->\n"


def rendered() -> dict[Path, str]:
    """Each file as it should read."""
    readme = (ROOT / "README.md").read_text()
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return {
        ROOT / ".env.example": example_env(),
        ROOT / "README.md": head + START + markdown_table() + END + tail,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    check = parser.parse_args().check
    stale = [path for path, text in rendered().items() if path.read_text() != text]
    if check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run `make docs`", file=sys.stderr)
        return 1 if stale else 0
    for path, text in rendered().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
