from __future__ import annotations

import threading

from django.http import HttpRequest, JsonResponse

from djangothreads.models import Visit


def visit(request: HttpRequest, client: str) -> JsonResponse:
    """Count this session's visits in the session, and record each one in the database."""
    number = request.session.get("visits", 0) + 1
    request.session["visits"] = number
    request.session["client"] = request.session.get("client", client)
    thread = threading.current_thread().name
    Visit.objects.create(client=client, number=number, thread=thread)
    return JsonResponse({"client": request.session["client"], "number": number,
                         "rows": Visit.objects.filter(client=client).count(),
                         "thread": thread})


def total(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"visits": Visit.objects.count()})
