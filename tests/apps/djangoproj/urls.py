from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from djangoproj import views

urlpatterns = [
    path("hello/<str:name>", views.hello),
    path("form", csrf_exempt(views.form)),
    path("json", csrf_exempt(views.json_echo)),
    path("cookies", views.cookies),
    path("stream", views.stream),
    path("meta", views.meta),
]
