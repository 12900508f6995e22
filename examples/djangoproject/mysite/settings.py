"""The smallest Django settings that serve a page: no database, no apps."""

SECRET_KEY = "only-for-the-example-never-in-production"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "mysite.urls"
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
USE_TZ = True
