"""Cassettes of the upload flow for images (tests/test_vision_e2e.py), synthesized.

No capture holds a file upload: the shapes are PROTOCOL.md section 6.9 and two gateways that
read them off the page (highkay/zai2api ``internal/upload.go``, zhaoxiaozhao07/zai-api
``src/image_handler.py``). The one trace of an uploaded image in a real capture (04: GLM-4.6V
passing it to its draw_boxes tool as ``https://z-cdn-media.chatglm.cn/files/<uuid>.png`` with
an ``auth_key`` query) agrees with the file object's ``cdn_url`` host and form (the id a UUID,
the extension the image's); it does not show whether the page names the file by id or by
that URL in the ``image_url`` part (both peers: by id). ``vision_upload`` holds
1. ``POST /api/v1/files/`` (multipart, one ``file`` field) answering the file object, which
the fake upstream (tests/fake_upstream.py) takes as the shape of every upload it answers
(fresh id, name, size, hash each time), and 2. a GLM-4.6V completion whose body carries the
file in the top-level ``files`` and an ``image_url`` part naming its id, answered (2026
shape, as capture 01) with a description of the test picture. Run from the repo root:
``.venv/bin/python -m scripts.vision_cassettes``.
"""

import json

from vcr.request import Request

from scripts.captures_to_cassettes import (
    BASE,
    FE_VERSION,
    UA,
    USER_ID,
    completion_request,
    json_response,
    sse,
    write,
)
from scripts.tool_cassettes import stream

FILE_ID = "5f0c7d9e-2b4a-4e61-9c3d-8a1b2e3f4c5d"
NAME = "image-4b1c0d2e9f3a.png"
FILE = {
    "id": FILE_ID,
    "user_id": USER_ID,
    "hash": None,
    "filename": NAME,
    "data": {},
    "meta": {
        "name": NAME,
        "content_type": "image/png",
        "size": 68,
        "data": {},
        "oss_endpoint": "",
        "cdn_url": f"https://z-cdn-media.chatglm.cn/files/{FILE_ID}.png",
    },
    "created_at": 1774188049,
    "updated_at": 1774188049,
}
PROMPT = "What is in this picture?"
THINKING = "The image is a tiny square filled with one solid red colour."
ANSWER = "The picture is a small solid red square, with nothing else in it."


def _upload() -> Request:
    boundary = "----zaigateway0123456789abcdef"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{NAME}"\r\n'
        f"Content-Type: image/png\r\n\r\n<68 bytes of PNG>\r\n--{boundary}--\r\n"
    )
    headers = {
        "Accept": "application/json",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "X-FE-Version": FE_VERSION,
        "Origin": BASE,
        "Referer": f"{BASE}/",
        "User-Agent": UA,
    }
    return Request("POST", f"{BASE}/api/v1/files/", body.encode(), headers)


def _completion() -> Request:
    request = completion_request("glm-4.6v", PROMPT)
    body = json.loads(request.body)
    message_id = "0d9b7c4e-6a1f-4b2d-8e3c-5f7a9b1c2d3e"
    body["messages"][0]["content"] = [
        {"type": "text", "text": PROMPT},
        {"type": "image_url", "image_url": {"url": FILE_ID}},
    ]
    body["current_user_message_id"] = message_id
    body["files"] = [
        {
            "type": "image",
            "file": FILE,
            "id": FILE_ID,
            "url": f"/api/v1/files/{FILE_ID}/content",
            "name": NAME,
            "status": "uploaded",
            "size": 68,
            "error": "",
            "itemId": "9e8d7c6b-5a4f-4e3d-9c2b-1a0f9e8d7c6b",
            "media": "image",
            "ref_user_msg_id": message_id,
        }
    ]
    return Request("POST", request.uri, json.dumps(body).encode(), request.headers)


def main() -> None:
    write(
        "vision_upload",
        "source: synthesized (PROTOCOL.md section 6.9; shapes from highkay/zai2api\n"
        "internal/upload.go and zhaoxiaozhao07/zai-api src/image_handler.py, no capture holds\n"
        "an upload; capture 04's one trace of an uploaded image, a draw_boxes img_url\n"
        "https://z-cdn-media.chatglm.cn/files/<uuid>.png?auth_key=..., agrees with the\n"
        "cdn_url below). 1. POST /api/v1/files/ answering the uploaded file object (the fake\n"
        "answers every upload in this shape); 2. a glm-4.6v completion naming the file in\n"
        "'files' and in an image_url part, answered (2026 shape, capture 01) about the image.",
        [
            (_upload(), json_response(200, "OK", FILE)),
            (_completion(), sse(stream(THINKING, ANSWER, (1290, 18), size=9))),
        ],
    )


if __name__ == "__main__":
    main()
