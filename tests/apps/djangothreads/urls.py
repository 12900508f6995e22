from django.urls import path

from djangothreads import views

urlpatterns = [
    path("visit/<str:client>", views.visit),
    path("total", views.total),
]
