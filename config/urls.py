from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config.health import healthz
from config.metrics import metrics_view
from core.views import api_not_found

api_v1 = [
    path("", include("tenants.urls")),
    path("", include("knowledge.urls")),
    path("", include("search.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    re_path(r"^", api_not_found),  # last: whatever else is under /api/v1/
]

urlpatterns = [
    path("admin/console/", include("console.urls")),  # before the admin's catch-all
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("api/v1/", include(api_v1)),
]

admin.site.site_header = "Lore administration"
admin.site.site_title = "Lore"
handler500 = "core.views.server_error"
