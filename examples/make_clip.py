"""Write a small synthetic video (a white square moving left to right) with PyAV.

    python examples/make_clip.py /tmp/clip.mp4 --frames 16 --fps 4

For trying `longctx generate --video` without a video at hand (needs the `video` extra:
`pip install -e .[video]`).
"""

import argparse

import numpy as np


def moving_square(frames, height, width, side=16):
    """Frames [frames, height, width, 3] uint8: a white `side` x `side` square crossing a dark grey
    background from left to right, one step per frame."""
    video = np.full((frames, height, width, 3), 40, dtype=np.uint8)
    top = (height - side) // 2
    for index in range(frames):
        left = index * (width - side) // max(frames - 1, 1)
        video[index, top : top + side, left : left + side] = 255
    return video


def write_clip(path, video, fps):
    """Encode frames [T, H, W, 3] uint8 (even H and W) as MPEG-4 at `fps` frames per second."""
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = video.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="video file to write (.mp4)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--fps", type=int, default=4)
    parser.add_argument("--size", default="112x84", help="WIDTHxHEIGHT in pixels (even numbers)")
    args = parser.parse_args()
    width, height = (int(value) for value in args.size.split("x"))
    write_clip(args.out, moving_square(args.frames, height, width), args.fps)
    print(f"wrote {args.frames} frames of {width}x{height} at {args.fps} fps to {args.out}")


if __name__ == "__main__":
    main()
