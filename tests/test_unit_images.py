"""Vision input read directly (``server.core.images``): the early checks, data: URLs, the
media type taken from the bytes, and remote images fetched over a real socket from a local
HTTP server (redirects followed, errors and the byte cap named, private hosts refused)."""

import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator

import pytest
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from server.core.chat import Conversation, Image, Turn
from server.core.errors import GatewayError
from server.core.images import check_images, gather, media_type_of
from server.core.models import STATIC

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 24
VISION = STATIC.rows["glm-4.6v"]
TEXT_ONLY = STATIC.rows["glm-4.7"]


def _conv(*sources: str, model=VISION) -> Conversation:
    images = [Image(f"messages[0].content[{i}]", s) for i, s in enumerate(sources)]
    return Conversation(model, [Turn("user", "what is it?", images)])


def _data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (b"GIF89a" + b"\x00" * 8, "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"BM" + b"\x00" * 8, "image/bmp"),
        (b"XXXX\x00\x00\x00\x00WEBP", ""),  # WEBP at 8 but no RIFF header
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", ""),
        (b"", ""),
    ],
)
def test_the_media_type_is_read_from_the_bytes(data: bytes, kind: str):
    assert media_type_of(data) == kind


def _refused_now(conv: Conversation, max_count: int = 10, user_tokens: bool = True):
    with pytest.raises(GatewayError) as caught:
        check_images(conv, STATIC, max_count, user_tokens)
    return caught.value


def test_images_to_a_model_without_vision_name_the_models_that_have_it():
    err = _refused_now(_conv(_data_url(PNG), model=TEXT_ONLY))
    assert err.status == 400 and err.param == "messages[0].content[0]"
    assert "GLM-4.6V" in err.detail and "GLM-4.6V-Thinking" not in err.detail


def test_images_with_only_guest_tokens_say_a_user_token_is_needed():
    err = _refused_now(_conv(_data_url(PNG)), user_tokens=False)
    assert "user token" in err.detail


def test_more_images_than_the_limit_name_the_first_one_too_many():
    err = _refused_now(_conv(*[_data_url(PNG)] * 3), max_count=2)
    assert err.param == "messages[0].content[2]" and "IMAGE_MAX_COUNT" in err.detail


def test_a_conversation_without_images_passes_every_check():
    check_images(Conversation(TEXT_ONLY, [Turn("user", "hi")]), STATIC, 0, False)


async def test_a_data_url_is_decoded_and_its_type_taken_from_the_bytes_not_the_url():
    conv = _conv(_data_url(JPEG, media="image/png"))
    await gather(conv, max_bytes=1000, timeout=5)
    [image] = conv.images
    assert (image.data, image.media_type, image.source) == (JPEG, "image/jpeg", "")
    assert image.digest == hashlib.sha256(JPEG).hexdigest()


async def _refused(conv: Conversation, max_bytes: int = 1000, private: bool = False):
    with pytest.raises(GatewayError) as caught:
        await gather(conv, max_bytes=max_bytes, timeout=5, private=private)
    return caught.value


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("data:image/png,rawbytes", "must be base64"),
        ("data:image/png;base64,!!!not base64!!!", "not valid base64"),
        (_data_url(b"plain text, not a picture"), "not an image"),
        ("ftp://example.com/a.png", "data: URL or an http(s) URL"),
    ],
)
async def test_an_image_that_cannot_be_read_is_a_400_naming_it(source: str, says: str):
    err = await _refused(_conv(source))
    assert err.status == 400 and says in err.detail and err.param == "messages[0].content[0]"


async def test_a_data_url_over_the_byte_cap_is_a_413():
    err = await _refused(_conv(_data_url(PNG + b"\x00" * 100)), max_bytes=64)
    assert err.status == 413 and "IMAGE_MAX_BYTES" in err.detail


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "10.1.2.3", "169.254.169.254", "localhost"])
async def test_a_private_host_is_refused_unless_allowed(host: str):
    err = await _refused(_conv(f"http://{host}/a.png"))
    assert "IMAGE_FETCH_PRIVATE" in err.detail


class _Images(tornado.web.RequestHandler):
    def get(self, name: str) -> None:
        if name == "a.png":
            self.set_header("Content-Type", "text/plain")  # a lying header: bytes decide
            self.write(PNG)
        elif name == "big.png":
            self.write(PNG + b"\x00" * 5000)
        elif name == "moved":
            self.redirect("/img/a.png")
        elif name == "loop":
            self.redirect("/img/loop")
        else:
            self.send_error(404)


@contextlib.asynccontextmanager
async def _image_host() -> AsyncIterator[str]:
    """A local HTTP server (tornado, loopback) holding the images of ``_Images``."""
    sock, port = bind_unused_port()
    server = HTTPServer(tornado.web.Application([(r"/img/(.*)", _Images)]))
    server.add_sockets([sock])
    try:
        yield f"http://127.0.0.1:{port}/img"
    finally:
        server.stop()
        await server.close_all_connections()


async def test_a_remote_image_is_fetched_and_a_redirect_followed():
    async with _image_host() as host:
        conv = _conv(f"{host}/a.png", f"{host}/moved")
        await gather(conv, max_bytes=1000, timeout=10, private=True)
    assert [(i.data, i.media_type) for i in conv.images] == [(PNG, "image/png")] * 2


@pytest.mark.parametrize(
    ("name", "status", "says"),
    [
        ("missing.png", 400, "HTTP 404"),
        ("loop", 400, "redirected more than 3 times"),
        ("big.png", 413, "IMAGE_MAX_BYTES"),
    ],
)
async def test_a_remote_image_that_cannot_be_had_says_why(name: str, status: int, says: str):
    async with _image_host() as host:
        err = await _refused(_conv(f"{host}/{name}"), max_bytes=1000, private=True)
    assert err.status == status and says in err.detail


async def test_an_unreachable_host_is_a_400_not_a_crash():
    sock, port = bind_unused_port()
    sock.close()  # nothing listens there now
    err = await _refused(_conv(f"http://127.0.0.1:{port}/a.png"), private=True)
    assert err.status == 400 and "could not fetch the image" in err.detail
