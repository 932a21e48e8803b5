"""The upstream's file API, as the web page uses it for images (PROTOCOL.md section 6.9).

Owns ``FILES_PATH``, ``upload_body`` (the multipart form the page posts: one ``file`` field
with the file name and media type), ``uploaded`` (the file object the upload answers, kept
as it came: the page sends it back whole), ``file_entry`` (one element of the completion's
top-level ``files``: the uploaded object wrapped as the page wraps it, pointing at the user
message it belongs to) and ``image_parts`` (the message content parts that reference the
files by id; pixels are never inlined). Shapes from two working gateways that read them off
the page (highkay/zai2api ``internal/upload.go``, zhaoxiaozhao07/zai-api
``src/image_handler.py``): both agree on every field used here.
"""

from typing import Any

import msgspec

from server.ids import uuid4_text

__all__ = ["FILES_PATH", "file_entry", "image_parts", "upload_body", "uploaded"]

FILES_PATH = "/api/v1/files/"


def upload_body(data: bytes, name: str, media_type: str) -> tuple[bytes, str]:
    """(body, Content-Type) of the multipart upload of one file."""
    boundary = "----zaigateway" + uuid4_text().replace("-", "")
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: {media_type}\r\n\r\n"
    ).encode()
    body = b"".join((head, data, f"\r\n--{boundary}--\r\n".encode()))
    return body, f"multipart/form-data; boundary={boundary}"


def uploaded(body: bytes) -> dict[str, Any]:
    """The file object an upload answered; raises ``ValueError`` when it is not one."""
    try:
        answer = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise ValueError("the file upload did not answer JSON") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("id"), str) or not answer["id"]:
        raise ValueError("the file upload answered no file id")
    return answer


def file_entry(
    file: dict[str, Any], message_id: str, files_path: str = FILES_PATH
) -> dict[str, Any]:
    """One element of the completion's ``files``: an uploaded image, for message
    ``message_id`` (the body's ``current_user_message_id``); ``files_path`` is where the
    upload went (the dialect's ``paths.files``)."""
    meta = file.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    return {
        "type": "image",
        "file": file,
        "id": file["id"],
        "url": f"{files_path}{file['id']}/content",
        "name": file.get("filename") or meta.get("name") or "image",
        "status": "uploaded",
        "size": meta.get("size", 0),
        "error": "",
        "itemId": uuid4_text(),
        "media": "image",
        "ref_user_msg_id": message_id,
    }


def image_parts(text: str, file_ids: list[str]) -> list[dict[str, Any]]:
    """A message's content with its images: the text, then one part per file id."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts += [{"type": "image_url", "image_url": {"url": fid}} for fid in file_ids]
    return parts
