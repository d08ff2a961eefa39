"""Frame timing of data_prep.media.decode_video against ffmpeg's fps filter, for coarse time bases.

Every clip is written with PyAV; source frame i shows the binary digits of i as eight black or
white stripes, so the index of the source frame behind any stored frame can be read back from
its pixels. The reference is ffmpeg's own `fps` filter, run through PyAV's filter graph on the
same decoded frames.
"""
import fractions
import io

import av
import numpy as np
import pytest
from PIL import Image

from data_prep import media
from data_prep.synthetic import VIDEO_ENCODERS, available_encoder

HEIGHT, WIDTH, BITS = 16, 64, 8  # eight stripes of 8 pixels: indices 0-255
NTSC = fractions.Fraction(30000, 1001)


def coded_frame(i):
  bits = (i >> np.arange(BITS)) & 1
  row = np.repeat(bits * 255, WIDTH // BITS).astype(np.uint8)
  return np.broadcast_to(row[None, :, None], (HEIGHT, WIDTH, 3)).copy()


def read_index(rgb):
  stripes = rgb.reshape(rgb.shape[0], BITS, -1, 3).mean(axis=(0, 2, 3))
  return int(sum(1 << b for b in range(BITS) if stripes[b] > 127))


def write_coded(path, rate, num_frames):
  """Frame i codes i; the container's own time base (FLV and Matroska: 1 ms; MP4: 1 ms too)."""
  codec = "flv" if path.endswith(".flv") else available_encoder(VIDEO_ENCODERS)
  # mp4's default timescale is exact for the rate; 1000 gives millisecond stamps, as in FLV.
  options = {"video_track_timescale": "1000"} if path.endswith(".mp4") else {}
  with av.open(path, "w", options=options) as container:
    stream = container.add_stream(codec, rate=rate)
    stream.height, stream.width, stream.pix_fmt = HEIGHT, WIDTH, "yuv420p"
    stream.codec_context.thread_count = 1
    if codec == "flv":
      stream.codec_context.qmax = 4  # sharp stripes at this tiny size
    for i in range(num_frames):
      for packet in stream.encode(av.VideoFrame.from_ndarray(coded_frame(i), format="rgb24")):
        container.mux(packet)
    for packet in stream.encode(None):
      container.mux(packet)


def fps_filter(path, fps, start_time=0.0):
  """(source index, RGB) of the frames ffmpeg's `fps=FPS:start_time=T` filter outputs.

  The graph's end of stream is the end of the last frame pushed (pts + duration). ffmpeg's
  command line gives a decoded frame without a duration (FLV has none) the gap since the
  previous frame (fftools/ffmpeg_dec.c, video_duration_estimate); the same is done here, or
  the graph would end an FLV stream at the start of its last frame.
  """
  with av.open(path) as container:
    stream = container.streams.video[0]
    graph = av.filter.Graph()
    source = graph.add_buffer(template=stream)
    fps_node = graph.add("fps", f"fps={fps}:start_time={start_time}")
    sink = graph.add("buffersink")
    source.link_to(fps_node)
    fps_node.link_to(sink)
    graph.configure()
    out = []

    def pull():
      while True:
        try:
          frame = graph.vpull()
        except (av.BlockingIOError, av.EOFError):
          return
        rgb = frame.to_ndarray(format="rgb24")
        out.append((read_index(rgb), rgb))

    held, gap = None, 0
    for frame in container.decode(stream):
      if held is not None:
        gap = frame.pts - held.pts
        if not held.duration:
          held.duration = gap
        graph.vpush(held)
        pull()
      held = frame
    if not held.duration:
      held.duration = gap
    graph.vpush(held)
    graph.vpush(None)
    pull()
    return out


def stored(clip):
  rgbs = [np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")) for jpeg in clip.frames]
  return [read_index(rgb) for rgb in rgbs], rgbs


def assert_same_frames(clip, reference):
  indices, rgbs = stored(clip)
  assert indices == [i for i, _ in reference]
  for got, (_, want) in zip(rgbs, reference):  # the same picture, up to JPEG
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 8


CONTAINERS = ("flv", "mkv", "mp4")
RATES = (16, 25, NTSC, 30)


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("rate", RATES, ids=lambda r: f"{float(r):g}fps")
def test_frames_equal_the_fps_filter(tmp_path, container, rate):
  # 1.0, 1.5 and 2.0 s: multiples of 0.5 s, where a millisecond stamp error used to add a frame;
  # 1.3 s, which is none.
  for seconds in (1.0, 1.3, 1.5, 2.0):
    num_frames = round(seconds * rate)
    path = str(tmp_path / f"clip_{num_frames}.{container}")
    write_coded(path, rate, num_frames)
    for fps in (16, 30):
      clip = media.decode_video(path, fps=fps, size=(HEIGHT, WIDTH))
      reference = fps_filter(path, fps)
      assert len(clip.frames) == len(reference), (seconds, fps)
      assert_same_frames(clip, reference)


def test_three_second_flv_at_16_fps_keeps_every_frame_once(tmp_path):
  # The case of the report: 48 frames, source frame k in place k (stamped 0, 63, 125, ... ms).
  path = str(tmp_path / "clip.flv")
  write_coded(path, 16, 48)
  assert stored(media.decode_video(path, fps=16, size=(HEIGHT, WIDTH)))[0] == list(range(48))


def test_flv_at_30_fps_of_half_seconds_has_no_extra_frame(tmp_path):
  path = str(tmp_path / "clip.flv")
  write_coded(path, 30, 45)  # 1.5 s, stamped 0, 33, 67, ... 1467 ms
  clip = media.decode_video(path, fps=30, size=(HEIGHT, WIDTH))
  assert stored(clip)[0] == list(range(45))
  # At 16 fps: each stamp rounds to the nearest 1/16 s, and output frame k is the last source
  # frame rounded to k or before (frames 9 and 10, at 300 and 333 ms, both round to 5/16 s).
  stamps_ms = np.floor(1000 * np.arange(45) / 30 + 0.5)
  ticks = np.floor(stamps_ms * 16 / 1000 + 0.5)
  expected = [int(np.nonzero(ticks <= k)[0].max()) for k in range(24)]
  assert expected[5] == 10
  clip = media.decode_video(path, fps=16, size=(HEIGHT, WIDTH))
  assert stored(clip)[0] == expected


@pytest.mark.parametrize("container", ("flv", "mkv"))
@pytest.mark.parametrize("start, end", [(0.5, 1.5), (2.5, 3.25)])  # 2.5 s: decoding seeks
def test_segment_frames_equal_the_fps_filter_from_its_start(tmp_path, container, start, end):
  path = str(tmp_path / f"clip.{container}")
  write_coded(path, NTSC, 120)  # 4.004 s
  clip = media.decode_video(path, fps=16, size=(HEIGHT, WIDTH), start=start, end=end)
  reference = fps_filter(path, 16, start_time=start)
  count = round((end - start) * 16)  # the frames before `end`
  assert len(clip.frames) == count
  assert_same_frames(clip, reference[:count])
