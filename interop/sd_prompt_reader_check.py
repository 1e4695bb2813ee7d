"""Read PNGs with sd-prompt-reader and print what it found, one JSON object per file.

sd-prompt-reader (1.3.5 on PyPI) pins pillow 10.3 and a GUI toolkit, so it lives in a venv of its own
(`make readers` builds `.venv-readers`); tests/test_png_metadata.py runs this script there. Usage:
`python interop/sd_prompt_reader_check.py A.png B.png ...` -> `{"path", "tool", "positive", "negative"}` lines.
"""

from __future__ import annotations

import json
import sys

from sd_prompt_reader.image_data_reader import ImageDataReader


def main(paths: list[str]) -> None:
    for path in paths:
        reader = ImageDataReader(path)
        print(json.dumps({"path": path, "tool": reader.tool, "positive": reader.positive,
                          "negative": reader.negative}))


if __name__ == "__main__":
    main(sys.argv[1:])
