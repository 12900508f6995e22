from django.http import JsonResponse
from django.urls import path


def where(request):
    # request.META is the WSGI environ forkserve passed in (plus Django's additions).
    return JsonResponse({
        "path": request.path,
        "script_name": request.META["SCRIPT_NAME"],
        "server": request.META["SERVER_SOFTWARE"],
        "multiprocess": request.META["wsgi.multiprocess"],
    })


urlpatterns = [path("where/", where)]
