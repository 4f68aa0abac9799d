"""H.264 facts the RTMP tests check the server against, found without the server: the profile-level-id libx264
writes for given settings, and the H.264 profiles an SDP names."""

from __future__ import annotations

import subprocess

# libx264 arguments for a stream of each profile without B-frames. `-profile:v` is only a ceiling: with
# `-preset ultrafast` (no CABAC, no 8x8 transform) libx264 writes Constrained Baseline whatever it says, so
# Main and High turn on the feature that needs them.
PROFILE_ARGS = {
    "baseline": ("-profile:v", "baseline", "-bf", "0"),
    "main": ("-profile:v", "main", "-bf", "0", "-x264-params", "cabac=1"),
    "high": ("-profile:v", "high", "-bf", "0", "-x264-params", "cabac=1:8x8dct=1"),
}


def x264_profile_level_id(*video_args: str) -> str:
    """The `profile-level-id` (hex) of the SPS libx264 writes for `ffmpeg_publish`'s video with `video_args`,
    read from one encoded frame by this test, not by the server."""
    cmd = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
        "-f", "lavfi", "-i", "testsrc=size=640x360:rate=30", "-frames:v", "1",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", *video_args, "-preset", "ultrafast", "-tune", "zerolatency",
        "-f", "h264", "-",
    ]
    es = subprocess.run(cmd, capture_output=True, check=True, timeout=30).stdout
    i = 0
    while (i := es.find(b"\x00\x00\x01", i)) >= 0:
        if es[i + 3] & 0x1F == 7:  # SPS: profile_idc, constraint flags, level_idc follow the NAL header
            return es[i + 4:i + 7].hex()
        i += 3
    raise AssertionError("no SPS in libx264 output")


def answer_h264_profiles(sdp: str) -> list[str]:
    """profile-level-id of every H264 format in an SDP's video section."""
    h264 = {line.split()[0].split(":")[1] for line in sdp.splitlines()
            if line.startswith("a=rtpmap:") and line.split()[1].upper().startswith("H264/")}
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=fmtp:") and line.split()[0].split(":")[1] in h264:
            out += [kv.split("=", 1)[1].lower() for kv in line.split(" ", 1)[1].split(";")
                    if kv.strip().startswith("profile-level-id=")]
    return out
