"""`liveml demo online` (a short stream) passes, writes a real PNG next to its summary,
and the summary says what held; without matplotlib it says how to get the plot and
still writes the summary."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from tests.helpers.procs import ROOT


def check_png(path: Path) -> tuple[int, int]:
    """A PNG's signature, its chunks' CRCs and IEND; its width and height."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    at, size, kinds = 8, (0, 0), []
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        body = data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        kinds.append(kind)
        at += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    return size


@pytest.mark.timeout(400)
def test_the_online_demo_tracks_two_drifts_and_draws_them(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable, "-m", "services.cli.main", "demo", "online", "--out", str(out),
            "--keep", str(tmp_path / "work"), "--phase-examples", "1500", "--rate", "500",
            "--phase-seconds", "150",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=380,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("LIVEML_")},
            "COLUMNS": "200",
        },
    )  # fmt: skip
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed
    width, height = check_png(out / "online-demo.png")
    assert width >= 600 and height >= 300
    summary = (out / "online-demo.txt").read_text()
    for claim in (
        "HELD: the online model recovered to >= 0.85 after each drift",
        "HELD: the static model decayed by >= 0.1 after each drift",
        "HELD: 0 of ",
        "concept A",
        "concept B",
        "concept C",
        f"plot: {out / 'online-demo.png'}",
    ):
        assert claim in summary, f"{claim!r} not in:\n{summary}"
    assert "FAILED" not in summary
    assert "demo passed" in printed and "HELD: the online model recovered" in printed


def test_without_matplotlib_the_summary_says_how_to_get_the_plot(tmp_path: Path) -> None:
    # matplotlib made unimportable in a fresh interpreter, as if it were not installed.
    script = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from pathlib import Path\n"
        "from services.cli.demo_online_summary import Record, verdict, write_outputs\n"
        "record = Record()\n"
        "lines, ok = verdict(record, None)\n"
        f"print(write_outputs(Path({str(tmp_path)!r}), record, lines)[0], ok)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "False"]  # no plot, and nothing held
    summary = (tmp_path / "online-demo.txt").read_text()
    assert "no plot: matplotlib is not installed (pip install 'liveml[plot]'" in summary
    assert "FAILED: the online model recovered" in summary
    assert not (tmp_path / "online-demo.png").exists()
