"""Test helpers that write small media files."""

import av
import numpy as np


def write_video(path, values, size=16):
    """A tiny MPEG-4 video whose frame i is a flat grey of value values[i]; returns ``path``."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for v in values:
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), v, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
