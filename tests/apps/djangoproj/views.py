from __future__ import annotations

import json
from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse


def hello(request: HttpRequest, name: str) -> JsonResponse:
    return JsonResponse({"hello": name, "q": request.GET.get("q"),
                         "tags": request.GET.getlist("tag")})


def form(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"form": request.POST.dict(), "method": request.method})


def json_echo(request: HttpRequest) -> JsonResponse:
    data = json.loads(request.body)
    return JsonResponse({"received": data})


def cookies(request: HttpRequest) -> HttpResponse:
    resp = JsonResponse({"cookies": request.COOKIES})
    resp.set_cookie("seen", "yes")
    return resp


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def generate() -> Iterator[bytes]:
        for i in range(50):
            yield f"chunk {i}\n".encode()

    return StreamingHttpResponse(generate(), content_type="text/plain")


def meta(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"script_name": request.META["SCRIPT_NAME"],
                         "path": request.path, "path_info": request.path_info,
                         "remote_addr": request.META["REMOTE_ADDR"],
                         "host": request.get_host()})
