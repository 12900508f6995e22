from django.db import models


class Visit(models.Model):
    client = models.CharField(max_length=40)
    number = models.IntegerField()
    thread = models.CharField(max_length=60)
