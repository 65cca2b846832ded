"""Print a directory that serves PyAV's own FFmpeg libraries under their usual names.

torchcodec loads the system's FFmpeg (``libavcodec.so.62`` and the rest); a machine without
FFmpeg installed cannot load it. PyAV's wheel carries FFmpeg's libraries with hashed names
(``av.libs/libavcodec-5e6b81c2.so.62.28.102``); this script links each as its plain name
(``libavcodec.so.62``) in a cache directory and prints that directory, so that both contenders
of ``benchmarks/decode.py --peers`` run on the same FFmpeg build:

    LD_LIBRARY_PATH=$(python benchmarks/pyav_ffmpeg.py) python benchmarks/decode.py --peers

The loader reads ``LD_LIBRARY_PATH`` when a process starts, so it is set on the command line.
"""

from __future__ import annotations

import re
from pathlib import Path

import av

LIBRARY = re.compile(r"^(?P<name>lib[a-z]+)-[0-9a-f]{8}\.so\.(?P<major>\d+)(\.\d+)*$")
FFMPEG = ("avcodec", "avdevice", "avfilter", "avformat", "avutil", "swresample", "swscale")


def link_pyav_ffmpeg(target: Path) -> Path:
    """Link PyAV's FFmpeg libraries in ``target`` as ``lib<name>.so.<major>``; return it.

    Raises:
        FileNotFoundError: this PyAV has no bundled FFmpeg (it was built against the system's).
    """
    bundled = Path(av.__file__).resolve().parent.parent / "av.libs"
    if not bundled.is_dir():
        raise FileNotFoundError(f"{bundled} does not exist: PyAV uses the system's FFmpeg")
    target.mkdir(parents=True, exist_ok=True)
    for path in bundled.iterdir():
        match = LIBRARY.match(path.name)
        if match and match["name"][3:] in FFMPEG:
            link = target / f"{match['name']}.so.{match['major']}"
            link.unlink(missing_ok=True)
            link.symlink_to(path)
    return target


if __name__ == "__main__":
    print(link_pyav_ffmpeg(Path.home() / ".cache" / "modaloom" / f"pyav-{av.__version__}-ffmpeg"))
