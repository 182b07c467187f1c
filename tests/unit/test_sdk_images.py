"""The images client without a server: URLs, streamed answers, uploads, progress views."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import os
import re
import threading
from pathlib import Path

import pytest

from sandport import (
    AsyncImages,
    ImageInfo,
    ImageNotFound,
    ImageRejected,
    Images,
    PushResult,
    RegistryAuthFailed,
    RegistryFailure,
    SandportError,
    ValidationFailed,
)
from sandport.cli._progress import Transfer, TransferDisplay, UploadDisplay, bar, short_digest
from sandport.cli.image import table
from sandport.errors import BadRequest, error_from_code
from sandport.sdk import _images as img
from sandport.settings import ClientSettings

SETTINGS = ClientSettings("http://srv:1", "spk_k")
LAYER_A = "sha256:" + "a" * 64
LAYER_B = "sha256:" + "b" * 64


def wire_image(name: str = "docker.io/library/node:22", **fields: object) -> dict[str, object]:
    return {**ImageInfo(name, True, "2024-01-01T00:00:00Z", 5 << 20, "pulled",
                        digest="sha256:" + "c" * 64, layers=2).to_wire(), **fields}


@pytest.mark.parametrize(("name", "path"), [
    ("python", "python"),
    ("node:22", "node:22"),
    ("docker.io/library/node:22", "docker.io/library/node:22"),
    ("127.0.0.1:5000/team/app:1", "127.0.0.1:5000/team/app:1"),
    ("app@sha256:abc", "app@sha256:abc"),
    ("my app?#%", "my%20app%3F%23%25"),
])
def test_image_names_go_into_the_path_as_they_are(name: str, path: str) -> None:
    assert img.image_url(SETTINGS, name) == f"http://srv:1/api/images/{path}"
    assert img.image_url(SETTINGS, name, "push") == f"http://srv:1/api/images/{path}/push"


@pytest.mark.parametrize("name", ["", "/abs", "trailing/", "a//b", "../etc", "a/./b", "a/.."])
def test_names_a_url_would_rewrite_are_refused(name: str) -> None:
    with pytest.raises(ValidationFailed, match="not an image name"):
        img.get_call(SETTINGS, name)


def test_calls() -> None:
    pull = img.pull_call(SETTINGS, "node:22")
    assert (pull.method, pull.url, pull.json_body) == (
        "POST", "http://srv:1/api/images/pull", {"ref": "node:22"})
    assert pull.headers == {"x-api-key": "spk_k"} and pull.timeout_s >= 600
    push = img.push_call(SETTINGS, "team/app:1", "127.0.0.1:5000/t/app:2")
    assert (push.url, push.json_body) == ("http://srv:1/api/images/team/app:1/push",
                                          {"ref": "127.0.0.1:5000/t/app:2"})
    delete = img.delete_call(SETTINGS, "docker.io/library/busybox:1")
    assert (delete.method, delete.url) == (
        "DELETE", "http://srv:1/api/images/docker.io/library/busybox:1")
    assert delete.parse(200, b'{"deleted": "docker.io/library/busybox:1"}') is None
    imported = img.import_call(SETTINGS, "mine:1")
    assert imported.url == "http://srv:1/api/images/mine:1/import" and imported.json_body is None
    assert imported.parse(200, json.dumps({"image": wire_image("mine:1")}).encode()).name == (
        "mine:1")
    listed = img.list_call(SETTINGS).parse(200, json.dumps({"images": [wire_image()]}).encode())
    assert [i.name for i in listed] == ["docker.io/library/node:22"]
    with pytest.raises(ValidationFailed):
        img.pull_call(SETTINGS, " ")
    with pytest.raises(ImageNotFound, match="no tag"):
        img.get_call(SETTINGS, "x").parse(404, b'{"error": "image_not_found", "message": "no tag"}')


def _feed(call: img.Call[object], lines: list[str]) -> tuple[list[dict[str, object]], object]:
    reader = img.ImageStream(call)
    events = [e for e in (reader.feed(line) for line in lines) if e is not None]
    return events, reader.result()


def test_a_pull_stream_gives_events_then_the_image() -> None:
    lines = [json.dumps({"status": "resolving", "ref": "node:22"}), "",
             json.dumps({"layer": LAYER_A, "status": "downloading", "done": 1, "total": 2}),
             json.dumps({"image": wire_image()})]
    events, image = _feed(img.pull_call(SETTINGS, "node:22"), lines)
    assert [e.get("status") for e in events] == ["resolving", "downloading"]
    assert isinstance(image, ImageInfo) and image.layers == 2 and image.source == "pulled"


def test_a_push_stream_gives_where_it_went() -> None:
    last = {"pushed": {"ref": "127.0.0.1:5000/t/a:1", "digest": LAYER_A}, "image": wire_image()}
    _, pushed = _feed(img.push_call(SETTINGS, "a", "127.0.0.1:5000/t/a:1"),
                      [json.dumps({"status": "pushing", "layers": 1}), json.dumps(last)])
    assert pushed == PushResult("127.0.0.1:5000/t/a:1", LAYER_A)


@pytest.mark.parametrize(("code", "cls"), [
    ("image_rejected", ImageRejected), ("registry_error", RegistryFailure),
    ("registry_auth_failed", RegistryAuthFailed), ("image_not_found", ImageNotFound),
    ("invalid_request", ValidationFailed), ("something_new", SandportError),
    ("transport_error", SandportError),
])
def test_an_error_line_mid_stream_raises_its_class(code: str, cls: type) -> None:
    reader = img.ImageStream(img.pull_call(SETTINGS, "node:22"))
    reader.feed(json.dumps({"status": "pulling", "layers": 1}))
    with pytest.raises(cls, match="layer 2 is hostile") as raised:
        reader.feed(json.dumps({"error": code, "message": "layer 2 is hostile"}))
    assert type(raised.value) is cls


def test_error_from_code_without_a_message() -> None:
    assert isinstance(error_from_code({"error": "bad_request"}), BadRequest)
    assert str(error_from_code(None)) == "the server reported an error"


def test_a_stream_that_ends_early_or_is_not_json_is_an_error() -> None:
    reader = img.ImageStream(img.pull_call(SETTINGS, "node:22"))
    reader.feed(json.dumps({"status": "resolving"}))
    with pytest.raises(SandportError, match="ended before its result"):
        reader.result()
    with pytest.raises(SandportError, match="not JSON"):
        reader.feed("<html>")
    with pytest.raises(SandportError, match="not an object"):
        reader.feed("[1]")


def test_upload_of_bytes_reports_each_chunk() -> None:
    seen: list[tuple[int, int | None]] = []
    data = os.urandom(img.UPLOAD_CHUNK * 2 + 5)
    with img.Upload(data, lambda sent, total: seen.append((sent, total))) as upload:
        assert upload.headers == {"content-length": str(len(data))}
        assert b"".join(upload.chunks()) == data
    assert seen == [(img.UPLOAD_CHUNK, len(data)), (2 * img.UPLOAD_CHUNK, len(data)),
                    (len(data), len(data))]


def test_upload_of_a_path_knows_its_size_and_closes_it(tmp_path: Path) -> None:
    path = tmp_path / "a.tar"
    path.write_bytes(b"x" * 3000)
    upload = img.Upload(path)
    assert upload.total == 3000 and upload.headers["content-length"] == "3000"
    assert b"".join(upload.chunks()) == b"x" * 3000 and upload.sent == 3000
    upload.close()
    assert upload._file is not None and upload._file.closed
    with pytest.raises(ValidationFailed, match="cannot read"):
        img.Upload(tmp_path / "missing.tar")


def test_upload_of_a_file_object_reads_from_where_it_stands() -> None:
    fh = io.BytesIO(b"0123456789")
    fh.seek(4)
    upload = img.Upload(fh)
    assert upload.total is None  # BytesIO has no descriptor: sent chunked
    assert b"".join(upload.chunks()) == b"456789"
    upload.close()
    assert not fh.closed  # the caller's file stays open


def test_upload_from_a_pipe_goes_chunked_and_async() -> None:
    read_end, write_end = os.pipe()
    data = os.urandom(300_000)

    def writer() -> None:
        with os.fdopen(write_end, "wb") as out:
            out.write(data)

    thread = threading.Thread(target=writer)
    thread.start()
    seen: list[int | None] = []
    with os.fdopen(read_end, "rb") as fh:
        upload = img.Upload(fh, lambda sent, total: seen.append(total))
        assert upload.headers == {}

        async def collect() -> bytes:
            return b"".join([chunk async for chunk in upload.achunks()])

        assert asyncio.run(collect()) == data
    thread.join()
    assert seen and set(seen) == {None} and upload.sent == len(data)


def test_images_and_async_images_have_the_same_surface() -> None:
    def surface(cls: type) -> dict[str, list[str]]:
        return {n: list(inspect.signature(f).parameters) for n, f in vars(cls).items()
                if callable(f) and not n.startswith("__") and n != "_http"}
    assert surface(Images) == surface(AsyncImages)
    assert {"list", "get", "pull", "push", "import_", "delete", "build"} <= set(surface(Images))
    assert all(inspect.iscoroutinefunction(getattr(AsyncImages, n))
               for n in ("list", "get", "pull", "push", "import_", "delete", "close"))


# --- progress views -----------------------------------------------------------------------

PULL_EVENTS: list[dict[str, object]] = [
    {"status": "resolving", "ref": "docker.io/library/node:22"},
    {"status": "pulling", "ref": "docker.io/library/node:22", "digest": LAYER_A, "layers": 2,
     "totalBytes": 3 << 20},
    {"layer": LAYER_A, "status": "exists", "done": 1 << 20, "total": 1 << 20},
    *({"layer": LAYER_B, "status": "downloading", "done": n << 19, "total": 2 << 20}
      for n in range(1, 5)),
    {"layer": LAYER_B, "status": "unpacking"},
    {"layer": LAYER_B, "status": "done", "done": 2 << 20, "total": 2 << 20},
]


def test_transfer_tells_state_changes_not_bytes() -> None:
    transfer = Transfer()
    changes = [c for c in map(transfer.update, PULL_EVENTS) if c is not None]
    assert changes == [
        "resolving docker.io/library/node:22",
        "pulling docker.io/library/node:22 (aaaaaaaaaaaa, 2 layers, 3.0 MiB)",
        "aaaaaaaaaaaa: exists (1.0 MiB)",
        "bbbbbbbbbbbb: downloading (2.0 MiB)",
        "bbbbbbbbbbbb: unpacking (2.0 MiB)",
        "bbbbbbbbbbbb: done (2.0 MiB)",
    ]
    assert transfer.done_bytes == 3 << 20 and transfer.finished_layers == 2


def test_transfer_midway_and_its_live_lines_fit_the_width() -> None:
    transfer = Transfer()
    for event in PULL_EVENTS[:4]:
        transfer.update(event)
    assert transfer.done_bytes == (1 << 20) + (1 << 19)
    for width in (20, 60, 200):
        lines = transfer.lines(width)
        assert len(lines) == 4 and all(len(line) < width for line in lines)
    assert "1/2 layers, 1.5 MiB of 3.0 MiB" in transfer.lines(200)[-1]
    assert "[======>" + " " * 21 + "] 512.0 KiB/2.0 MiB" in transfer.lines(200)[2]  # 1/4


def test_a_push_without_a_total_sums_its_layers() -> None:
    transfer = Transfer()
    transfer.update({"status": "pushing", "ref": "r:1", "layers": 2})
    transfer.update({"layer": LAYER_A, "status": "exists", "done": 10, "total": 10})
    transfer.update({"layer": LAYER_B, "status": "uploading", "done": 0, "total": 30})
    assert (transfer.done_bytes, transfer.known_bytes) == (10, 40)


def test_plain_display_prints_one_line_per_state_change() -> None:
    out = io.StringIO()
    display = TransferDisplay(out, live=False)
    for event in PULL_EVENTS:
        display(event)
    display.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 6 and "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def test_live_display_redraws_in_place_at_most_ten_times_a_second() -> None:
    now = [0.0]
    out = io.StringIO()
    display = TransferDisplay(out, live=True, clock=lambda: now[0])
    for event in PULL_EVENTS:
        display(event)  # the clock stands still: only the 6 changes of state redraw
    assert out.getvalue().count("node:22") == 6  # one headline per drawing
    now[0] = 1.0
    display({"layer": LAYER_B, "status": "done", "done": 2 << 20, "total": 2 << 20})
    assert out.getvalue().count("node:22") == 7  # bytes alone redraw, 0.1 s later
    # Each drawing first goes back up over the lines the one before drew.
    assert [int(n) for n in re.findall(r"\x1b\[(\d+)F", out.getvalue())] == [2, 2, 3, 4, 4, 4]
    assert out.getvalue().count("\n") == 2 + 2 + 3 + 4 + 4 + 4 + 4


def test_upload_display_plain_prints_quarters() -> None:
    out = io.StringIO()
    display = UploadDisplay(out, live=False, label="uploading a.tar")
    for sent in range(0, 101):
        display(sent, 100)
    display.finish("sent")
    lines = out.getvalue().splitlines()
    assert [line.split("(")[-1] for line in lines[:-1]] == ["0%)", "25%)", "50%)", "75%)",
                                                           "100%)"]
    assert lines[-1] == "sent"


def test_helpers() -> None:
    assert short_digest(LAYER_A) == "a" * 12
    assert bar(1, 4, 10) == "[=>      ]" and bar(4, 4, 6) == "[====]" and bar(0, None, 4) == "[  ]"


def test_image_table_fits_long_names() -> None:
    long = "127.0.0.1:5000/a/very/long/repository/name/for/the/table:v1"
    rows = table([ImageInfo(long, True, "2024-01-01T12:34:56Z", 5 << 20, "pulled", layers=3,
                            last_used_at="2024-01-02T00:00:00.000Z"),
                  ImageInfo("base", False, None, None, "builtin")])
    assert rows[0].split() == ["NAME", "SOURCE", "SIZE", "LAYERS", "CREATED", "LAST", "USED"]
    assert rows[1].split() == [long, "pulled", "5.0", "MiB", "3", "2024-01-01", "12:34",
                               "2024-01-02", "00:00"]
    assert rows[2].split() == ["base", "builtin", "-", "-", "not", "built", "-"]
    assert rows[0].index("SOURCE") == rows[1].index("pulled") == len(long) + 2
