import os

from django.core.asgi import get_asgi_application

# A server started without DJANGO_SETTINGS_MODULE runs production settings (no debug pages;
# they refuse the development key). `./dev up` chooses the local ones explicitly.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")
application = get_asgi_application()
